// The inspection page: upload an image, show the decision and overlay, poll recent rows.
// Plain browser JavaScript, no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
let overlayUrl = null;
let tokenRequired = false;
let shown = null; // the inspection in the result panel

function authHeaders() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("defectmap-token", token);
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: authHeaders() }, options || {}));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      message = body.detail || message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

async function showInspection(row) {
  $("result").hidden = false;
  const decision = row.decision || "none";
  $("decision").textContent = row.decision || "no calibration";
  $("decision").className = "decision " + decision;
  $("r-file").textContent = row.filename + " (" + row.width + "×" + row.height + ")";
  $("r-score").textContent = fmt(row.score, 4);
  $("r-norm").textContent = fmt(row.normalized_score, 3);
  $("r-p").textContent = fmt(row.p_value, 4);
  $("r-ms").textContent = fmt(row.elapsed_ms, 1) + " ms";
  $("r-regions").textContent = row.regions.length === 0 ? "none" : row.regions
    .map((r) => "[" + r.bbox.join(", ") + "] area " + r.area + " peak " + fmt(r.peak, 3))
    .join("; ");
  $("r-version").textContent = row.model.version || row.model.hash.slice(0, 16);
  $("r-verdict").textContent = verdictText(row.verdict);
  shown = row;
  // The picture is fetched with the token header, then shown from a blob URL.
  const img = $("overlay");
  try {
    const response = await api(row.links.overlay);
    if (overlayUrl) URL.revokeObjectURL(overlayUrl);
    overlayUrl = URL.createObjectURL(await response.blob());
    img.src = overlayUrl;
    img.style.display = "block";
  } catch (err) {
    img.style.display = "none";
    setStatus("overlay: " + err.message, true);
  }
}

function verdictText(verdict) {
  if (!verdict) return "none yet";
  return verdict.verdict + " by " + verdict.operator + (verdict.note ? " (" + verdict.note + ")" : "");
}

async function sendVerdict(word) {
  if (!shown) return;
  const operator = $("operator").value.trim();
  if (!operator) {
    setStatus("enter your name as operator first", true);
    return;
  }
  localStorage.setItem("defectmap-operator", operator);
  try {
    const response = await api(shown.links.verdict, {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
      body: JSON.stringify({ verdict: word, operator: operator, note: $("note").value.trim() }),
    });
    const verdict = await response.json();
    $("r-verdict").textContent = verdictText(verdict);
    $("note").value = "";
    setStatus("verdict stored: " + shown.filename + " is " + word, false);
    refreshRecent();
  } catch (err) {
    setStatus("verdict: " + err.message, true);
  }
}

async function refreshDrift() {
  if (tokenRequired && !$("token").value.trim()) return;
  try {
    const d = await (await api("/v1/health/drift")).json();
    const box = $("drift");
    box.className = d.status === "alarm" ? "alarm" : d.status === "ok" ? "ok" : "";
    if (d.status === "alarm") {
      box.textContent = "DRIFT ALARM: scores " + d.direction + " (p = " + d.p_value.toExponential(1)
        + ", " + d.n_above + "/" + d.n_parts + " above the reference)";
    } else if (d.status === "ok") {
      box.textContent = "drift: ok (p = " + fmt(d.p_value, 3) + ")";
    } else if (d.status === "collecting") {
      box.textContent = "drift: collecting " + d.n_parts + "/" + d.window + " passed parts";
    } else {
      box.textContent = "drift: no calibration";
    }
    box.title = d.test;
  } catch (err) {
    $("drift").textContent = "drift: " + err.message;
  }
}

async function inspectFile(file) {
  setStatus("inspecting " + file.name + " …", false);
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const response = await api("/v1/inspect", { method: "POST", body: form });
    const row = await response.json();
    setStatus("done: " + row.filename + " → " + (row.decision || "no decision"), false);
    await showInspection(row);
    refreshRecent();
  } catch (err) {
    setStatus("error: " + err.message, true);
  }
}

async function refreshRecent() {
  if (tokenRequired && !$("token").value.trim()) {
    setStatus("this service needs a token: enter it at the top", false);
    return;
  }
  try {
    const response = await api("/v1/inspections?limit=20");
    const body = await response.json();
    const tbody = $("recent");
    tbody.replaceChildren();
    for (const row of body.inspections) {
      const tr = document.createElement("tr");
      const cells = [row.created_at.replace("T", " ").slice(0, 19), row.filename,
        row.decision || "–", fmt(row.score, 4), String(row.regions.length),
        row.model.version || row.model.hash.slice(0, 16),
        row.verdict ? row.verdict.verdict + " (" + row.verdict.operator + ")" : ""];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.children[2].className = row.decision || "none";
      tr.addEventListener("click", () => showInspection(row));
      tbody.appendChild(tr);
    }
  } catch (err) {
    setStatus("recent inspections: " + err.message, true);
  }
}

async function refreshHealth() {
  try {
    const health = await (await fetch("/healthz")).json();
    $("model-info").textContent = "model " + health.model
      + (health.model_version ? " version " + health.model_version : "")
      + (health.reload_error ? " (new version not loaded: " + health.reload_error + ")" : "");
  } catch (_) { /* shown by the next call */ }
}

async function start() {
  const saved = sessionStorage.getItem("defectmap-token");
  if (saved) $("token").value = saved;
  $("operator").value = localStorage.getItem("defectmap-operator") || "";
  $("verdict-ok").addEventListener("click", () => sendVerdict("ok"));
  $("verdict-defect").addEventListener("click", () => sendVerdict("defect"));
  try {
    const health = await (await fetch("/healthz")).json();
    tokenRequired = health.token_required;
    if (tokenRequired) $("token-box").style.display = "inline";
    $("model-info").textContent = "model " + health.model
      + (health.model_version ? " version " + health.model_version : "");
  } catch (err) {
    setStatus("service unreachable: " + err.message, true);
  }
  const drop = $("drop");
  const input = $("file");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") input.click(); });
  input.addEventListener("change", () => {
    if (input.files.length) inspectFile(input.files[0]);
    input.value = "";
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) inspectFile(e.dataTransfer.files[0]);
  });
  $("token").addEventListener("change", refreshRecent);
  refreshRecent();
  refreshDrift();
  setInterval(() => { refreshRecent(); refreshDrift(); refreshHealth(); }, POLL_MS);
}

start();
