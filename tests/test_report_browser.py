"""Open report.html in Debian's headless Chromium: no console errors, tables and images shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defectmap.report import write_report
from test_report import fake_report_data

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs /usr/bin/chromium (install with `make browser-deps`)"),
]


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    report = write_report(fake_report_data(tmp_path / "images"), tmp_path / "out", max_gallery=6)

    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            assert page.title() == "defectmap evaluation report"
            assert page.locator("table.summary td").count() >= 10
            assert page.locator("table.per-defect tbody tr").count() == 2
            assert page.locator("table.operating").count() == 1
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert len(widths) == 3 + 6
            assert all(w > 0 for w in widths), widths
            shot = Path(os.environ.get("DEFECTMAP_SCREENSHOT_DIR", tmp_path)) / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert problems == []
    # Only the page itself (and its inline data: images) is loaded: it works offline.
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
