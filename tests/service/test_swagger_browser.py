"""Swagger UI at / in a real headless browser (Debian's chromium through Playwright): the project's title,
version and description, and "Try it out" on /translate answers 200 with an image (issue 16: it answered 400
"Too many files", the page said `ganforge:dev`, version `None` and BentoML's boilerplate).

Needs `chromium` (apt) and `playwright` (pip); slow (a browser start), so `make test-slow` runs it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.service.conftest import png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")
def test_swagger_page_and_translate_try_it_out(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    upload = tmp_path / "edges.png"
    upload.write_bytes(png(np.where(np.random.default_rng(4).random((28, 28)) > 0.8, 0, 255).astype(np.uint8)))
    shots = tmp_path  # kept by pytest (its last 3 runs): look at them
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(server.url + "/", wait_until="networkidle")
        page.wait_for_selector(".info .title", timeout=30_000)
        title = page.inner_text(".info .title")
        assert "ganforge" in title and "None" not in title and "dev" not in title, title
        assert "seed" in page.inner_text(".info .description")
        assert "Machine Learning Service created with BentoML" not in page.content()
        assert page.title().startswith("ganforge ") and "BentoML" not in page.title()
        page.screenshot(path=str(shots / "swagger-top.png"))
        op = page.locator("#operations-images-translate")
        op.locator(".opblock-summary").click()
        op.locator("button.try-out__btn").click()
        op.locator("input[type=file]").set_input_files(str(upload))
        op.locator("button.execute").click()
        cell = "#operations-images-translate .live-responses-table tbody .response-col_status"
        page.wait_for_selector(cell, timeout=60_000)
        status = page.locator(cell).first.inner_text().strip()
        op.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "swagger-translate.png"), full_page=True)
        browser.close()
    assert status.startswith("200"), status
