"""Helpers for the real-browser tests (tests/test_browser.py): Debian chromium driven by Playwright.

Everything here finds page elements the way a person does, by their visible label or text, or by
an ``elem_id`` the app sets on purpose (``#output``, ``#token-view``, ``#attention-plot``), never by
Gradio's generated class names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from waiting import CEILING_S, wait_until

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GPT_EXPLORER_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}
ARTIFACTS = REPO / "test-artifacts" / "browser"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
DONE_MARKERS = ("reached max new tokens", "model ended the text", "stopped after")
# Set to 1 to (re)write the README screenshots in docs/screenshots/ while the browser tests run.
UPDATE_DOCS = os.environ.get("GPT_EXPLORER_UPDATE_SCREENSHOTS", "") not in ("", "0")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)


class Console:
    """Console errors, uncaught page errors and failed requests of one page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        # a stream the page closes on purpose (Stop, leaving) is "aborted": not an error
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} ({r.failure})")
                if "ERR_ABORTED" not in (r.failure or "") else None)


# A counter of finished events on the output box: Gradio shows a status tracker on an output while its
# event is queued or streaming and hides it when the event ends. A MutationObserver sees every change,
# so even a generation shorter than a polling interval is counted.
_WATCH_JS = """() => {
  if (window.__gen) return;
  const st = { done: 0, busy: false, samples: [] };
  window.__gen = st;
  const box = document.querySelector('#output');
  const ta = () => box.querySelector('textarea');
  const check = () => {
    const tr = box.querySelector('[data-testid="status-tracker"]');
    const busy = !!tr && !tr.classList.contains('hide');
    if (st.busy && !busy) st.done += 1;
    st.busy = busy;
  };
  new MutationObserver(check).observe(box, { attributes: true, childList: true, subtree: true });
  check();
  // Gradio's error badges (a status tracker that says "Error") and error toasts that are visible now
  window.__errorBadges = () => [...document.querySelectorAll('[data-testid="status-tracker"], .toast-body')]
    .filter(el => el.offsetParent !== null && /error/i.test(el.className + ' ' + el.innerText)
            && /error/i.test(el.innerText)).map(el => el.innerText.trim().slice(0, 200));
  // Whether a plotly figure holds real numbers: some finite, non-zero value in its computed traces
  // (heatmap cells, bar sizes, point coordinates), not only an annotation on empty axes.
  window.__plotSummary = (gd) => {
    if (!gd || !gd.calcdata) return { traces: 0, values: 0, nonzero: 0, types: [] };
    let values = 0, nonzero = 0;
    const add = (v) => { if (typeof v === 'number' && isFinite(v)) { values++; if (v !== 0) nonzero++; } };
    for (const trace of gd.calcdata) for (const pt of trace || []) {
      if (!pt) continue;
      if (pt.z) for (const row of pt.z) {
        if (row && row.length !== undefined) for (const v of row) add(v); else add(row);
      }
      if ('s' in pt) add(pt.s); else add(pt.y);  // bar sizes, else point heights
    }
    return { traces: gd.data ? gd.data.length : 0, values, nonzero, types: (gd.data || []).map(t => t.type) };
  };
  // the length of the generated text every 10 ms while busy: how the text grew
  setInterval(() => { if (st.busy) st.samples.push([performance.now(), ta().value.length]); }, 10);
}"""


def open_app(page, url: str, console: Console | None = None) -> Console:
    console = console or Console(page)
    page.goto(url, wait_until="load")
    page.locator("#output textarea").wait_for(state="visible", timeout=60_000)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=30_000)
    page.evaluate(_WATCH_JS)
    return console


def output_text(page) -> str:
    return page.locator("#output textarea").input_value()


STATS = '[data-testid="markdown"].stats'


def stats_text(page) -> str:
    return page.locator(STATS).inner_text()


def number_input(page, label: str, timeout_s: float = CEILING_S):
    """The number box of the slider labelled `label` (Gradio gives it that accessible name), once the
    page shows it."""
    loc = page.locator(f'input[aria-label="number input for {label}"]:visible')
    try:
        loc.first.wait_for(state="visible", timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"no slider labelled {label!r} is visible: its label is missing or changed") from None
    return loc.first


def set_slider(page, label: str, value) -> None:
    """Type ``value`` into the slider's number box until the page holds it. An update from the server
    that re-renders the slider meanwhile (a view switch, a link being restored) can reset what was
    typed: then it is typed again."""
    def holds() -> bool:
        box = number_input(page, label)
        try:
            return float(box.input_value()) == float(value)
        except ValueError:
            return False

    def typed() -> bool:
        if holds():
            return True
        box = number_input(page, label)
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        return wait_until(holds, timeout_s=2.0)  # a short look: if it did not hold, the next round types again

    assert wait_until(typed, interval_s=0.1), f"the slider {label!r} never kept the value {value}"


def set_seed(page, seed: int) -> None:
    box = page.get_by_label("Seed", exact=True)
    box.fill(str(seed))
    box.press("Tab")


def choose_preset(page, name: str) -> None:
    page.get_by_label(name, exact=True).filter(visible=True).first.check()


def set_prompt(page, text: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(text)


def finished_generations(page) -> int:
    return page.evaluate("window.__gen.done")


def click_generate(page) -> int:
    """Press Generate; returns the count of finished generations before the click."""
    n = finished_generations(page)
    page.evaluate("window.__gen.samples = []")
    page.get_by_role("button", name="Generate", exact=True).click()
    return n


def wait_generation_done(page, before: int, timeout_s: float = 120) -> str:
    page.wait_for_function("n => window.__gen.done > n", arg=before, timeout=timeout_s * 1000)
    page.wait_for_function("([sel, m]) => m.some(x => document.querySelector(sel).innerText.includes(x))",
                           arg=[STATS, list(DONE_MARKERS)], timeout=timeout_s * 1000)
    return output_text(page)


def generate(page, timeout_s: float = 120) -> str:
    return wait_generation_done(page, click_generate(page), timeout_s)


def growth_samples(page) -> list[tuple[float, int]]:
    return [tuple(s) for s in page.evaluate("window.__gen.samples")]


def error_badges(page) -> list[str]:
    """The texts of Gradio's visible error badges and error toasts (none when all is well)."""
    return page.evaluate("window.__errorBadges()")


def wait_for_stats(page, text: str, timeout_s: float = 120) -> str:
    """Wait until the stats line under the output contains ``text``; the line."""
    page.wait_for_function("([sel, t]) => document.querySelector(sel).innerText.includes(t)", arg=[STATS, text],
                           timeout=timeout_s * 1000)
    return stats_text(page)


def wait_for_output(page, condition_js: str, timeout_s: float = 120) -> str:
    """Wait until the generated text ``t`` satisfies a JS condition on ``t`` (e.g. "t.length > 0")."""
    page.wait_for_function(f"() => {{ const t = document.querySelector('#output textarea').value; "
                           f"return {condition_js}; }}", timeout=timeout_s * 1000)
    return output_text(page)


def wait_for_plot_with_data(page, within: str | None = None, timeout_s: float = 90) -> dict:
    """Wait until a visible plotly figure (inside `within`, else anywhere) shows data; its summary."""
    sel = f"{within} .js-plotly-plot" if within else ".js-plotly-plot"
    # the figure is chosen in the page, in the same step that finds it showing data: a redraw cannot come between
    found = page.wait_for_function(
        "sel => { const shown = [...document.querySelectorAll(sel)].filter(g => g.offsetParent !== null)"
        ".map(g => window.__plotSummary(g)).filter(s => s.nonzero > 0);"
        " return shown.length ? shown.reduce((a, b) => (b.nonzero > a.nonzero ? b : a)) : null; }",
        arg=sel, timeout=timeout_s * 1000)
    return found.json_value()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_function("n => [...document.querySelectorAll('[role=tab]')].some(t => "
                           "t.textContent.trim() === n && t.getAttribute('aria-selected') === 'true')", arg=name)


def injected_elements(page) -> dict:
    """What an HTML/JS payload would have left in the page had it been rendered as HTML."""
    return page.evaluate("""() => ({
      pwned: typeof window.__pwned !== 'undefined' ? String(window.__pwned) : null,
      imgs: [...document.querySelectorAll('img')].filter(i => (i.getAttribute('src') || '') === 'x'
              || i.hasAttribute('onerror')).length,
      scripts: [...document.querySelectorAll('script')].filter(s => s.textContent.includes('__pwned')).length,
      handlers: document.querySelectorAll('[onerror], [onload*="__pwned"], [onclick*="__pwned"]').length,
      iframes: [...document.querySelectorAll('iframe')]
                 .filter(f => (f.getAttribute('srcdoc') || '').includes('__pwned')).length,
    })""")


def screenshot(page, name: str, docs_name: str | None = None, full_page: bool = False) -> Path:
    """Save a PNG to test-artifacts/browser/; with GPT_EXPLORER_UPDATE_SCREENSHOTS=1 also write it to
    docs/screenshots/<docs_name>.png (the README's pictures, in 256 colours to keep the repository small)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if docs_name and UPDATE_DOCS:
        from PIL import Image

        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            small.save(DOCS_SCREENSHOTS / f"{docs_name}.png", optimize=True)
    return path


def scroll_to(page, selector: str, margin: int = 90) -> None:
    """Scroll so that `selector` sits `margin` px below the top of the viewport."""
    page.evaluate("([s, m]) => { const el = document.querySelector(s); if (el) window.scrollTo(0, "
                  "el.getBoundingClientRect().top + window.scrollY - m); }", [selector, margin])
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # drawn there


def tokens_generated(stats: str) -> int | None:
    m = re.search(r"(\d+) tokens generated", stats)
    return int(m.group(1)) if m else None


def heatmap_extremes(page, selector: str) -> dict:
    """Where the single heatmap inside ``selector`` has its largest and smallest finite value:
    {'max': (row, col, z), 'min': (row, col, z)}."""
    return page.evaluate("""s => { const z = document.querySelector(s + ' .js-plotly-plot').calcdata[0][0].z;
        let hi = null, lo = null;  // calcdata: the values as plotly.js draws them, [row][column]
        Array.from(z).forEach((row, r) => Array.from(row).forEach((v, c) => {
            if (typeof v !== 'number' || !isFinite(v)) return;
            if (!hi || v > hi[2]) hi = [r, c, v];
            if (!lo || v < lo[2]) lo = [r, c, v]; }));
        return {max: hi, min: lo}; }""", selector)


def drawn_cell_colour(page, selector: str, row: int, col: int) -> tuple[int, int, int]:
    """The colour the browser drew for cell (row, col) of the single heatmap inside ``selector``: one
    pixel of a screenshot, taken between the cell's centre and its edge (clear of any text written on the
    cell and of the gaps between cells)."""
    from io import BytesIO

    from PIL import Image

    x, y = page.evaluate("""([s, r, c]) => { const gd = document.querySelector(s + ' .js-plotly-plot');
        gd.scrollIntoView({block: 'center'});
        const fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis, box = gd.getBoundingClientRect();
        const w = Math.abs(xa.l2p(c + 1) - xa.l2p(c)), h = Math.abs(ya.l2p(r + 1) - ya.l2p(r));
        return [box.left + fl._size.l + xa.l2p(c) + 0.3 * w, box.top + fl._size.t + ya.l2p(r) + 0.3 * h]; }""",
                         [selector, row, col])
    png = page.screenshot(clip={"x": x, "y": y, "width": 1, "height": 1})
    with Image.open(BytesIO(png)) as im:
        return im.convert("RGB").getpixel((0, 0))


def luminance(rgb: tuple[int, int, int]) -> float:
    """Relative brightness, 0 (black) to 1 (white)."""
    r, g, b = (v / 255 for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
