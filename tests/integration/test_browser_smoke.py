"""The browser helpers themselves: headless Chromium renders a self-contained page offline (DOM after scripts, a non-blank screenshot)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from browser import dump_dom, is_blank, page_requests, screenshot

pytestmark = pytest.mark.integration

SWATCH = (200, 30, 30)


def swatch_png_base64(size: int = 96) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), SWATCH).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def report_page(tmp_path):
    """A page like a self-contained report: a table, an inline PNG, and a row only JavaScript adds (late)."""
    page = tmp_path / "report.html"
    page.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title></head>
<body>
<h1>Leaderboard</h1>
<table id="board" border="1">
  <tr><th>model</th><th>balanced accuracy</th></tr>
  <tr><td>cnn_small</td><td>0.91</td></tr>
</table>
<img id="swatch" alt="swatch" src="data:image/png;base64,{swatch_png_base64()}"
     onload="this.dataset.decoded = this.naturalWidth">
<script>
  setTimeout(() => document.getElementById("board").insertAdjacentHTML(
    "beforeend", "<tr><td>svm_rbf</td><td>0.84</td></tr>"), 1000);
</script>
</body></html>
""")
    return page


def test_dom_has_the_table_the_decoded_image_and_the_script_added_row(chromium, report_page):
    dom = dump_dom(report_page)
    assert '<table id="board"' in dom and "cnn_small" in dom
    assert 'data-decoded="96"' in dom  # the inline PNG decoded at its real size
    assert "svm_rbf" in dom  # written by a timer: the DOM is dumped after scripts ran


def test_screenshot_shows_the_page(chromium, report_page, tmp_path):
    png = screenshot(report_page, tmp_path / "page.png", width=800, height=600)
    with Image.open(png) as im:
        assert im.size == (800, 600)
        colours = {colour for _, colour in im.convert("RGB").getcolors(800 * 600)}
    assert not is_blank(png)
    assert SWATCH in colours  # the inline PNG was painted


def test_a_text_only_table_is_not_blank(chromium, tmp_path):
    page = tmp_path / "table.html"
    page.write_text("<table><tr><td>cnn_small</td><td>0.91</td></tr><tr><td>svm_rbf</td><td>0.84</td></tr></table>")
    assert not is_blank(screenshot(page, tmp_path / "table.png"))


def test_page_requests_sees_what_a_page_fetches_and_nothing_else(chromium, report_page, tmp_path):
    assert page_requests(report_page) == []  # inline image only (the browser's own traffic left out)
    page = tmp_path / "external.html"
    page.write_text('<img src="http://example.invalid/x.png"><link rel="stylesheet" href="https://cdn.example.invalid/a.css">')
    assert page_requests(page) == ["http://example.invalid/x.png", "https://cdn.example.invalid/a.css"]
