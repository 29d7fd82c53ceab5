"""The web page of the inspection service, driven by headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from defectmap.serve import create_app
from test_serve import LiveServer, synthetic_test_images, trained_model_dir

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page_server(
    tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path
) -> Iterator[LiveServer]:
    model_dir = trained_model_dir(tmp_path_factory, synthetic_root)
    db = tmp_path_factory.mktemp("browser_db") / "audit.sqlite3"
    with LiveServer(create_app(model_dir, db_path=db, token="page-token")) as live:
        yield live


def _browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (install it with: bash scripts/ensure-chromium.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    return sync_api


def test_page_uploads_an_image_and_shows_decision_and_overlay(
    page_server: LiveServer, synthetic_root: Path, tmp_path: Path
) -> None:
    sync_api = _browser()
    images = synthetic_test_images(synthetic_root, tmp_path / "pasted")
    defect = images["pasted"][0]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(page_server.url + "/")
            # A token is set: the page shows its field; without it the table cannot load.
            page.wait_for_selector("#token", state="visible", timeout=10_000)
            page.fill("#token", "page-token")
            page.set_input_files("#file", str(defect))
            page.wait_for_function(
                "document.getElementById('overlay').complete"
                " && document.getElementById('overlay').naturalWidth > 0",
                timeout=60_000,
            )
            decision = page.text_content("#decision")
            natural = page.evaluate("document.getElementById('overlay').naturalWidth")
            score_text = page.text_content("#r-score")
            # The recent table refreshes and lists the upload.
            page.wait_for_function(
                "document.querySelectorAll('#recent tr').length >= 1", timeout=15_000
            )
            first_row = page.text_content("#recent tr")
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("DEFECTMAP_KEEP_SCREENSHOT"):
                shutil.copy(shot, os.environ["DEFECTMAP_KEEP_SCREENSHOT"])
        finally:
            browser.close()

    # What the page shows is what the service logged.
    with httpx.Client(base_url=page_server.url, timeout=30) as http:
        rows = http.get(
            "/v1/inspections", headers={"Authorization": "Bearer page-token"}
        ).json()["inspections"]
    assert len(rows) == 1
    row = rows[0]
    assert row["filename"] == defect.name
    assert decision == row["decision"] == "defect"
    assert natural == 128
    assert score_text == f"{row['score']:.4f}"
    assert first_row is not None and defect.name in first_row and row["decision"] in first_row
    assert shot.stat().st_size > 10_000


def test_feedback_loop_in_the_page(
    tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, tmp_path: Path
) -> None:
    """Inspect, overrule a false alarm, update, promote, inspect again: it passes, and the
    trail shows both versions."""
    from defectmap.cli._common import run_app
    from defectmap.registry import Registry

    sync_api = _browser()
    model_dir = trained_model_dir(tmp_path_factory, synthetic_root)
    registry = tmp_path / "registry"
    assert run_app(["models", "add", str(registry), str(model_dir), "--promote"]) == 0
    first = Registry(registry).current()
    assert first is not None
    db = tmp_path / "audit.sqlite3"
    sticker = synthetic_test_images(synthetic_root, tmp_path / "pasted")["pasted"][0]
    app = create_app(registry, db_path=db, store_images=True, reload_s=0.2)
    with LiveServer(app) as live, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(live.url + "/")
            page.wait_for_function(
                f"document.getElementById('model-info').textContent.includes('{first}')",
                timeout=15_000)
            page.set_input_files("#file", str(sticker))
            page.wait_for_function("document.getElementById('decision').textContent === 'defect'",
                                   timeout=60_000)
            assert page.text_content("#r-version") == first
            page.fill("#operator", "ana")
            page.fill("#note", "label sticker")
            page.click("#verdict-ok")
            page.wait_for_function(
                "document.getElementById('r-verdict').textContent.startsWith('ok by ana')",
                timeout=15_000)

            assert run_app(["update", str(registry), "--from-verdicts", str(db)]) == 0
            second = Registry(registry).versions()[-1].id
            assert second != first
            assert run_app(["models", "promote", str(registry), second]) == 0
            page.wait_for_function(
                f"document.getElementById('model-info').textContent.includes('{second}')",
                timeout=20_000)

            page.set_input_files("#file", str(sticker))
            page.wait_for_function(
                f"document.getElementById('r-version').textContent === '{second}'",
                timeout=60_000)
            decision = page.text_content("#decision")
            page.wait_for_function("document.querySelectorAll('#recent tr').length >= 2",
                                   timeout=15_000)
            rows = page.eval_on_selector_all(
                "#recent tr", "rows => rows.map(r => Array.from(r.children, c => c.textContent))")
            shot = tmp_path / "feedback_page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("DEFECTMAP_KEEP_SCREENSHOT"):
                shutil.copy(shot, Path(os.environ["DEFECTMAP_KEEP_SCREENSHOT"]).with_name(
                    "feedback_page.png"))
        finally:
            browser.close()
    assert decision == "ok"
    # Newest first: the re-inspection by the new version, then the overruled false alarm.
    assert [(r[1], r[2], r[5]) for r in rows] == [
        (sticker.name, "ok", second), (sticker.name, "defect", first)]
    assert rows[1][6] == "ok (ana)" and rows[0][6] == ""
