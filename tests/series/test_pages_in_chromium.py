"""The web pages under site/ read in Chromium at a phone's width (390 px) and a laptop's (1366 px).

Each page, opened from disk: it does not scroll sideways, nothing in it runs past the window's right edge
or is cut off unless it scrolls inside a box of its own, every image loaded, and it fetched nothing from
outside this machine. A full-page screenshot of each page at each width lands in PAGE_CHECKS for review.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from chi_helpers.local.target import DEFAULT_WORKDIR
from chi_helpers.series.build import SHARED_CSS, SITE_DIR
from chi_helpers.ui_walk import browser

PAGE_CHECKS = DEFAULT_WORKDIR / "page-checks"  # git-ignored
PAGES = sorted(SITE_DIR.glob("*.html"))
SIZES = {390: 844, 1366: 768}  # an iPhone 12-15's width, a common laptop's

# Each visible element, against the first ancestor whose overflow is not `visible` (body and html pass
# theirs to the window): where there is none, it must end inside the window; where that ancestor clips
# (hidden, clip), it must end inside the ancestor; where it scrolls (auto, scroll), the element is
# reachable, and the ancestor itself is checked as an element like any other. Only the outermost
# offender is named: its children would repeat it.
OVERFLOW_JS = """() => {
  const limit = window.innerWidth, named = new Set(), found = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
    + (typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const box = (el) => {
    for (let up = el.parentElement; up && up !== document.body && up !== document.documentElement; up = up.parentElement) {
      const overflow = getComputedStyle(up).overflowX;
      if (overflow !== 'visible') return [up, overflow];
    }
    return [null, 'visible'];
  };
  for (const el of document.body.querySelectorAll('*')) {
    const rect = el.getBoundingClientRect();
    if (rect.width === 0 || rect.height === 0) continue;
    let up = el.parentElement;
    while (up && !named.has(up)) up = up.parentElement;
    if (up) continue;
    const [outer, overflow] = box(el), right = Math.round(rect.right);
    if (!outer && right > limit + 1) {
      found.push(`${name(el)} ends at ${right} px, past the window's ${limit}`); named.add(el);
    } else if (outer && (overflow === 'hidden' || overflow === 'clip') && right > outer.getBoundingClientRect().right + 1) {
      found.push(`${name(el)} is cut off by ${name(outer)} (overflow-x: ${overflow})`); named.add(el);
    }
  }
  return found;
}"""

# Every <img>, lazy ones made eager, once it has loaded or failed: the ones that show nothing.
BROKEN_IMAGES_JS = """async () => {
  const images = [...document.images];
  await Promise.all(images.map((img) => {
    img.loading = 'eager';
    return img.complete ? null : new Promise((done) => { img.onload = img.onerror = done; });
  }));
  return images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.getAttribute('src'));
}"""


# Tables that do not fit their cell's column (and so must be scrolled to be read), by their first header.
TABLES_THAT_SCROLL_JS = """() => [...document.querySelectorAll('table')].filter((table) => {
  const column = table.closest('.jp-RenderedHTMLCommon') || document.body;
  return table.scrollWidth > table.clientWidth + 1
    || table.getBoundingClientRect().right > column.getBoundingClientRect().right + 1;
}).map((table) => table.querySelector('th, td')?.textContent.trim())"""


def sideways(page) -> list[str]:
    """What makes the page scroll sideways, or runs past the window's edge, or is cut off; [] when none."""
    problems = []
    scroll, width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if scroll > width:
        problems.append(f"the page scrolls sideways: {scroll} px of content in a {width} px window")
    found = page.evaluate(OVERFLOW_JS)
    return problems + found[:10] + ([f"... and {len(found) - 10} more"] if len(found) > 10 else [])


@pytest.fixture(scope="module")
def chromium_browser(chromium):
    with browser.chromium(chromium) as opened:
        yield opened


@pytest.fixture(scope="module")
def page_checks(request) -> Path:
    PAGE_CHECKS.mkdir(parents=True, exist_ok=True)
    for old in PAGE_CHECKS.glob("*.png"):
        old.unlink()
    request.config.page_checks_note = f"page screenshots (390 and 1366 px): {PAGE_CHECKS}"
    return PAGE_CHECKS


def screenshot(context, page, path: Path) -> None:
    """The whole page as a PNG, through the DevTools protocol: its `optimizeForSpeed` (which Playwright's
    `screenshot` does not offer) halves the time on these ~30,000 px pages, at a slightly larger file."""
    width, height = page.evaluate("[window.innerWidth, document.documentElement.scrollHeight]")
    shot = context.new_cdp_session(page).send("Page.captureScreenshot", {
        "format": "png", "optimizeForSpeed": True, "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


def open_page(chromium_browser, path: Path, width: int, refused: list[str]):
    context = browser.guarded_context(chromium_browser, refused, viewport={"width": width, "height": SIZES[width]})
    page = context.new_page()
    page.goto(path.resolve().as_uri(), wait_until="load")
    return context, page


def test_there_are_pages_to_check():
    assert {"index.html", "local.html"} <= {p.name for p in PAGES} and (SITE_DIR / SHARED_CSS).is_file()


@pytest.mark.parametrize("width", list(SIZES))
@pytest.mark.parametrize("path", PAGES, ids=[p.stem for p in PAGES])
def test_page_reads_at_width(chromium_browser, page_checks, path, width):
    refused: list[str] = []
    context, page = open_page(chromium_browser, path, width, refused)
    try:
        screenshot(context, page, page_checks / f"{path.stem}-{width}px.png")
        assert sideways(page) == []
        assert page.evaluate(BROKEN_IMAGES_JS) == []
        if path.name == "index.html":  # the variant table once ran off a phone's screen: it fits, unscrolled
            assert page.evaluate(TABLES_THAT_SCROLL_JS) == []
    finally:
        context.close()
    assert refused == [], "the page fetched from outside this machine"


def test_the_checks_catch_a_page_that_does_not_fit(chromium_browser, tmp_path):
    """A copy of the index with a 2000 px block, a line cut off by its box, a missing image, an image
    from the Internet and a table too wide for a phone: each check names what it should."""
    (tmp_path / SHARED_CSS).write_text((SITE_DIR / SHARED_CSS).read_text())
    html = (SITE_DIR / "index.html").read_text()
    assert html.count("<main>") == 1
    bad = tmp_path / "index.html"
    bad.write_text(html.replace("<main>", (
        '<main><div id="too-wide" style="width: 2000px">wide</div>'
        '<div style="overflow: hidden; width: 200px"><span id="cut" style="display: inline-block; width: 300px">'
        'cut</span></div><img src="missing.webp" alt=""><img src="https://example.com/far.png" alt="">'
        '<div class="jp-RenderedHTMLCommon"><table><tr><th>long</th>'
        f'<td style="white-space: nowrap">{"word " * 100}</td></tr></table></div>')))
    refused: list[str] = []
    context, page = open_page(chromium_browser, bad, 390, refused)
    try:
        problems = sideways(page)
        assert problems[0].startswith("the page scrolls sideways")
        assert any(p.startswith("div#too-wide ends at") for p in problems), problems
        assert any(p.startswith("span#cut is cut off by div") for p in problems), problems
        assert not any("jp-" in p for p in problems), problems  # the page's own content still fits
        assert page.evaluate(BROKEN_IMAGES_JS) == ["missing.webp", "https://example.com/far.png"]
        assert page.evaluate(TABLES_THAT_SCROLL_JS) == ["long"]
    finally:
        context.close()
    assert refused == ["https://example.com/far.png"]
