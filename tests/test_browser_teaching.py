"""Real-browser tests of the teaching views (Debian chromium + Playwright, the bundled model): one
generated token through every view, the surprise timeline, samples side by side, the cost of 8 bits,
and a link that restores the lesson. The fixtures ``browser``, ``page`` and ``live_app`` are in
conftest.py; the helpers find elements by label, text or the ``elem_id`` the app sets on purpose."""

from __future__ import annotations

import io
import math
import re

import pytest
from browser_helpers import (
    drawn_cell_colour,
    finished_generations,
    generate,
    heatmap_extremes,
    luminance,
    open_tab,
    screenshot,
    scroll_to,
    set_prompt,
    set_seed,
    set_slider,
    stats_text,
    tokens_generated,
    wait_for_plot_with_data,
    wait_generation_done,
)

pytestmark = pytest.mark.browser

PROMPT = "The old sea captain looked at the boy and said,"
PCT = re.compile(r"([0-9.]+(?:e-?[0-9]+)?)%")


def percent(text: str) -> float:
    """The first percentage in a text, as a fraction."""
    m = PCT.search(text)
    assert m, f"no percentage in {text!r}"
    return float(m.group(1)) / 100


def tooltip(page, k: int) -> tuple[str, float]:
    """(label, probability) of generated token k as the coloured output shows them (its tooltip)."""
    first = page.locator(f'#token-view .tok[data-pos="{k}"] .tip').text_content().splitlines()[0]
    m = re.match(rf"#{k + 1} (.*?)\s+p = (.*)$", first)
    assert m, first
    return m.group(1), percent(m.group(2)) if m.group(2) != "0" else 0.0


def plot_data(page, selector: str) -> list[dict]:
    """The traces (x, y, name) of the plotly figure inside ``selector``."""
    return page.evaluate("s => (document.querySelector(s + ' .js-plotly-plot').data || []).map(t => "
                         "({x: t.x, y: t.y, name: t.name}))", selector)


def wait_step(page, k: int) -> str:
    page.wait_for_function("k => document.querySelector('#step-summary').innerText.includes('Token #' + k + ' ')",
                           arg=k + 1, timeout=60_000)
    return page.locator("#step-summary").inner_text()


def drawn_bar(page) -> tuple[str, float]:
    """(label, probability after the settings) of the bar marked as drawn in the step's distribution."""
    page.wait_for_function("() => { const g = document.querySelector('#step-bars .js-plotly-plot'); "
                           "return g && g.data && g.data.length === 2; }")
    traces = plot_data(page, "#step-bars")
    marked = [i for i, y in enumerate(traces[1]["y"]) if "◀ drawn" in y]
    assert len(marked) == 1, traces[1]["y"]
    return traces[1]["y"][marked[0]], traces[1]["x"][marked[0]]


def click_timeline_point(page, index: int) -> None:
    """A real mouse click on point ``index`` of the surprise timeline (plotly's own hit-testing)."""
    xy = page.evaluate("""i => {
      const gd = document.querySelector('#surprise-timeline .js-plotly-plot');
      const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
      return [box.left + xa._offset + xa.l2p(gd.data[0].x[i]), box.top + ya._offset + ya.l2p(gd.data[0].y[i])];
    }""", index)
    page.mouse.move(*xy)
    page.mouse.click(*xy)


def test_a_generated_token_opens_its_step_and_the_timeline_has_a_point_per_token(page, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 10)
    set_seed(page, 11)
    generate(page)
    n = tokens_generated(stats_text(page))
    page.wait_for_function("n => document.querySelectorAll('#token-view .tok').length === n", arg=n)

    # The timeline: one point per generated token, surprisal and entropy in bits.
    wait_for_plot_with_data(page, "#surprise-timeline")
    surprisal, entropy = plot_data(page, "#surprise-timeline")
    assert surprisal["x"] == list(range(1, n + 1)) and len(entropy["y"]) == n
    assert all(y >= 0 for y in surprisal["y"] + entropy["y"])

    # Clicking token k (the first, one in the middle, the last) shows the distribution it was drawn
    # from, the drawn token marked, with the probability the coloured output showed.
    for k in (0, 4, n - 1):
        label, p = tooltip(page, k)
        page.locator(f'#token-view .tok[data-pos="{k}"]').click()
        summary = wait_step(page, k)
        assert label in summary
        assert percent(summary.split("probability", 1)[1]) == pytest.approx(p, rel=0.02), (summary, p)
        bar_label, bar_p = drawn_bar(page)
        assert label in bar_label and bar_p == pytest.approx(p, rel=0.02)
        assert surprisal["y"][k] == pytest.approx(-math.log2(p), abs=0.05)
    # Where it looked: the attention of the token read last, drawn in every head of every layer.
    page.get_by_role("tab", name="Where it looked").click()
    wait_for_plot_with_data(page, "#step-attention")
    scroll_to(page, "#step-summary", 200)
    screenshot(page, "token-step", docs_name="token-step")

    # A click on a point of the timeline selects that token too.
    scroll_to(page, "#surprise-timeline", 120)
    click_timeline_point(page, 2)
    wait_step(page, 2)
    tooltip_label_2 = tooltip(page, 2)[0]
    page.wait_for_selector('#token-view .tok.sel[data-pos="2"]')
    screenshot(page, "surprise-timeline", docs_name="surprise-timeline")

    # One click away: the Next-token tab with the text the model had read, and the Attention tab on its row.
    page.get_by_role("button", name="Open this step in the Next-token tab").click()
    page.wait_for_function("n => [...document.querySelectorAll('[role=tab]')].some(t => t.textContent.trim() === n "
                           "&& t.getAttribute('aria-selected') === 'true')", arg="Next token")
    wait_for_plot_with_data(page, "[role=tabpanel]")
    text_box = page.get_by_label("Text", exact=True).filter(visible=True).first
    assert text_box.input_value().startswith(PROMPT)
    page.get_by_text("Opened token #3 of the generation").wait_for()
    chosen = page.get_by_label("…or choose any token from the list").input_value()
    assert chosen.split(". ", 1)[1].startswith(tooltip_label_2 + " "), "the drawn token is ready in the list"
    bars = page.evaluate("() => [...document.querySelectorAll('[role=tabpanel] .js-plotly-plot')]"
                         ".filter(g => g.offsetParent !== null).flatMap(g => (g.data || []).flatMap(t => t.y || []))")
    assert any("drawn" in str(y) for y in bars), "the drawn token is among the bars, marked"
    open_tab(page, "Generate")
    misses = live_app[0].cache.misses
    page.get_by_role("button", name="Open this step in the Attention tab").click()
    page.wait_for_function("p => { const el = document.querySelector('#attention-text textarea'); "
                           "return el && el.value.startsWith(p) && el.value.length > p.length; }", arg=PROMPT)
    wait_for_plot_with_data(page, "#attention-plot")
    assert page.locator("#attention-view input[value=token]").is_checked()
    assert live_app[0].cache.misses == misses, "the step's forward pass came from the cache"
    # the page does not say so: whether a text was cached tells which texts other visitors analysed
    assert "computed in" in page.locator("#attention-notice").inner_text()
    assert page.console.errors == []


# ----------------------------------------------------------------------------- samples side by side


def card_texts(page) -> list[tuple[int, str]]:
    """(seed, generated text) of each sample card."""
    return page.evaluate("""() => [...document.querySelectorAll('#samples .card')].map(c => [
      parseInt(c.querySelector('.head b').textContent),
      [...c.querySelector('.text').childNodes].filter(n => !(n.classList && n.classList.contains('prompt')))
        .map(n => n.textContent).join('')])""")


def test_samples_stream_side_by_side_and_each_equals_a_generation_alone(page):
    open_tab(page, "Samples")
    page.locator("#samples-prompt textarea").fill(PROMPT)
    set_slider(page, "Samples (seeds)", 3)
    set_slider(page, "Max new tokens per sample", 12)
    seed_box = page.get_by_label("Seed of the first sample", exact=True)
    seed_box.fill("21")
    seed_box.press("Tab")
    row_b = "() => document.querySelector('input[aria-label=\"range slider for Temperature (row B)\"]').disabled"
    assert page.evaluate(row_b), "row B's sliders take no input while the second row is off"
    page.get_by_label("Second row: the same seeds under another temperature and top-p").check()
    page.wait_for_function(f"() => !({row_b})()")
    page.get_by_role("button", name="Generate samples").click()
    page.wait_for_function("() => { const c = document.querySelectorAll('#samples .card'); return c.length === 6 && "
                           "[...c].every(x => x.querySelector('.head').textContent.includes('done')); }",
                           timeout=120_000)
    cards = card_texts(page)
    assert [seed for seed, _ in cards] == [21, 22, 23] * 2
    assert all(text.strip() for _, text in cards)
    heads = page.locator("#samples .rowhead").all_inner_texts()
    assert len(heads) == 2 and "Temperature 0.8" in heads[0] and "Temperature 1.2" in heads[1], heads
    scroll_to(page, "#samples", 160)
    screenshot(page, "samples", docs_name="samples")

    # Re-run the first and the last sample: the Generate tab generates it alone, and the same seed gives
    # the same text
    for index in (0, 5):
        before = finished_generations(page)
        page.locator(f'#samples button[data-sample="{index}"]').click()
        page.wait_for_function("n => [...document.querySelectorAll('[role=tab]')].some(t => t.textContent.trim() "
                               "=== n && t.getAttribute('aria-selected') === 'true')", arg="Generate")
        seed = cards[index][0]
        assert wait_generation_done(page, before) == cards[index][1], f"sample {index} (seed {seed}) alone"
        assert page.evaluate("() => document.querySelector('input[aria-label=\"Seed\"]').value") == str(seed)
        assert page.get_by_label("Prompt", exact=True).input_value() == PROMPT
        page.wait_for_function("n => document.querySelectorAll('#token-view .tok').length === n",
                               arg=tokens_generated(stats_text(page)))  # its coloured tokens too
        open_tab(page, "Samples")
    assert page.console.errors == []


# ----------------------------------------------------------------------------- the cost of 8 bits


def test_the_cost_of_8_bits_compares_the_two_precisions(page, live_app):
    open_tab(page, "8-bit vs full")
    page.get_by_role("button", name="Compare 8-bit with full precision").click()
    page.wait_for_function("() => document.querySelector('#precision-summary').innerText.includes('changed at')",
                           timeout=120_000)
    summary = page.locator("#precision-summary").inner_text()
    m = re.search(r"int8 vs fp32 \(gutenberg-gpt\): the top choice changed at (\d+) of (\d+) positions", summary)
    assert m and int(m.group(1)) <= int(m.group(2)), summary
    wait_for_plot_with_data(page, "#precision-plot")
    traces = plot_data(page, "#precision-plot")
    kl = traces[0]
    assert len(kl["y"]) == int(m.group(2)) and all(y >= 0 for y in kl["y"])
    assert "MB" in page.locator("#precision-memory").inner_text()
    assert live_app[0].manager.require().precision == "fp32", "the visitor's own model is unchanged"
    scroll_to(page, "#precision-summary", 60)
    screenshot(page, "precision", docs_name="precision")
    assert page.console.errors == []


# ----------------------------------------------------------------------------- colours read the way the notes say


def assert_darker_means_more(page, selector: str) -> None:
    """The heatmap's largest value is drawn darker than its smallest, as every note says ("darker = more")."""
    ext = heatmap_extremes(page, selector)
    (hr, hc, hz), (lr, lc, lz) = ext["max"], ext["min"]
    assert hz - lz > 0.3, f"too little contrast in the data to judge the colours: {ext}"
    high, low = drawn_cell_colour(page, selector, hr, hc), drawn_cell_colour(page, selector, lr, lc)
    assert luminance(high) < luminance(low) - 0.3, f"{selector}: {hz:.3f} drawn {high}, {lz:.3f} drawn {low}"


def test_heatmaps_draw_high_values_dark_and_low_values_light(page, live_app):
    open_tab(page, "Attention")
    wait_for_plot_with_data(page, "#attention-plot")
    assert_darker_means_more(page, "#attention-plot")
    open_tab(page, "Next token")
    page.get_by_text("Logit lens: how the prediction forms through the layers").click()
    page.get_by_role("button", name="Run the logit lens").click()
    wait_for_plot_with_data(page, "#lens-plot")
    assert "darker = more confident" in page.locator("[role=tabpanel]").filter(visible=True).inner_text()
    assert_darker_means_more(page, "#lens-plot")
    assert page.console.errors == []


# ----------------------------------------------------------------------------- a link that restores the lesson


def selected_tab(page) -> str:
    return page.evaluate("() => [...document.querySelectorAll('[role=tab]')].find(t => "
                         "t.getAttribute('aria-selected') === 'true')?.textContent.trim()")


def copy_link(page) -> str:
    page.get_by_role("button", name="Copy a link to this view").click()
    page.wait_for_function("() => document.querySelector('#share-link textarea, #share-link input')?.value"
                           ".includes('#')")
    return page.locator("#share-link textarea, #share-link input").first.input_value()


def test_a_copied_link_restores_the_text_settings_and_view_in_a_fresh_browser(page, browser, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 14)
    set_slider(page, "Temperature", 1.3)
    set_seed(page, 42)
    text = generate(page)
    open_tab(page, "Attention")
    attention_text = "The cat sat on the mat. The cat sat on the"
    page.locator("#attention-text textarea").fill(attention_text)
    page.get_by_role("button", name="Show attention").click()
    # the figure of the new text, not the one the tab drew on its first visit
    page.wait_for_function("() => { const g = document.querySelector('#attention-plot .js-plotly-plot'); "
                           "return g && g.data && g.data.length && String(g.data[0].x).includes('mat'); }")
    page.locator("#attention-view").get_by_label("All heads of a layer").check()
    # the view switch re-renders the sliders: let it finish (the grid of heads is drawn) before moving one
    page.wait_for_function("() => { const g = document.querySelector('#attention-plot .js-plotly-plot'); "
                           "return g && g.data && g.data.filter(t => t.type === 'heatmap').length > 1; }")
    set_slider(page, "Layer (0 = first)", 2)
    page.wait_for_function("() => document.querySelector('#attention-note').innerText.includes('layer 2')")
    link = copy_link(page)
    assert link.startswith(live_app[1]) and "tab=attention" in link and "seed=42" in link

    fresh = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        other = fresh.new_page()
        other.set_default_timeout(60_000)
        from browser_helpers import open_app

        console = open_app(other, link)
        other.wait_for_function("() => [...document.querySelectorAll('[role=tab]')].some(t => "
                                "t.textContent.trim() === 'Attention' && t.getAttribute('aria-selected') === 'true')")
        other.wait_for_function("t => document.querySelector('#attention-text textarea').value === t",
                                arg=attention_text)
        wait_for_plot_with_data(other, "#attention-plot")
        assert other.locator("#attention-view").get_by_label("All heads of a layer").is_checked()
        other.wait_for_function("() => document.querySelector('#attention-note').innerText.includes('layer 2')")
        assert "Opened from a shared link" in other.locator("#link-notice").inner_text()
        screenshot(other, "link-restored", docs_name="link-restored")
        open_tab(other, "Generate")
        assert other.get_by_label("Prompt", exact=True).input_value() == PROMPT
        assert other.get_by_label("Seed", exact=True).input_value() == "42"
        assert number_value(other, "Temperature") == 1.3 and number_value(other, "Max new tokens") == 14
        assert generate(other) == text, "the same model, settings and seed give the same text"
        assert console.errors == []
    finally:
        fresh.close()


def test_a_link_after_a_random_seed_shows_the_text_and_makes_it_again(page, browser, live_app):
    """The default seed is random (-1): a link made after the generation carries the seed that was drawn,
    and the text itself, so a class sees the teacher's text and Generate makes it again."""
    from browser_helpers import open_app, output_text

    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 12)
    set_seed(page, -1)
    text = generate(page)
    seed = int(re.search(r"seed (\d+)", stats_text(page)).group(1))
    link = copy_link(page)
    assert f"seed={seed}" in link and "output=" in link

    fresh = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        other = fresh.new_page()
        other.set_default_timeout(60_000)
        console = open_app(other, link)
        other.wait_for_function("t => document.querySelector('#output textarea').value === t", arg=text)
        notice = other.locator("#link-notice").inner_text()
        assert "the one the link was made from" in notice and f"({seed})" in notice, notice
        assert other.get_by_label("Seed", exact=True).input_value() == str(seed)
        assert generate(other) == text == output_text(other), "the link's seed makes the same text again"
        assert console.errors == []
    finally:
        fresh.close()


def read_qr(png: bytes) -> list[str]:
    """The texts of the QR codes in a screenshot (zxing-cpp, as a phone's camera would read them)."""
    import zxingcpp
    from PIL import Image

    return [r.text for r in zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))]


def test_the_qr_codes_read_back_as_the_link_and_the_page_address(page, live_app):
    set_prompt(page, PROMPT)
    set_seed(page, 7)
    page.get_by_role("button", name="QR code for the class").click()
    page.wait_for_function("() => document.querySelectorAll('#share-qr svg').length === 2", timeout=60_000)
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    assert link.startswith(live_app[1]) and "#" in link and "seed=7" in link
    codes = page.locator("#share-qr figure.qr")
    assert read_qr(codes.nth(0).locator("svg").screenshot()) == [link]
    assert read_qr(codes.nth(1).locator("svg").screenshot()) == [link.split("#")[0]]
    box = codes.nth(0).locator("svg").bounding_box()
    assert box["width"] >= 200 and box["height"] >= 200, "large enough to scan from the back of a room"
    # the test server listens on 127.0.0.1: the page says the students cannot reach that address
    assert "only on this computer" in page.locator("#share-qr").inner_text()
    screenshot(page, "qr-codes", docs_name="qr-codes")
    assert page.console.errors == []


def number_value(page, label: str) -> float:
    return float(page.locator(f'input[aria-label="number input for {label}"]:visible').first.input_value())


TAMPERED = {
    "nan-and-unknown-model": ("#model=no-such-model&temperature=NaN&top_k=-5&tab=attention&layer=999999999",
                              ["model must be one of", "temperature must be a finite number", "top_k must be in",
                               "layer must be in"]),
    "script-in-the-prompt": ("#prompt=%3Cscript%3Ewindow.__pwned%3D1%3C%2Fscript%3E%3Cimg%20src%3Dx%20onerror%3D"
                             "%22window.__pwned%3D2%22%3E&seed=abc&nonsense=1",
                             ["seed must be", "'nonsense' is not something a link can set"]),
    "a-1-mb-prompt": ("#prompt=" + "a" * 1_000_000, ["the link is too long"]),
    "a-bare-address": ("#https://1249763399/reset-password=1&admin@evil.example=2",
                       ["https://1249763399/reset-password", "is not something a link can set"]),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_link_opens_the_page_with_a_notice(page, live_app, name):
    from browser_helpers import injected_elements, open_app

    fragment, expected = TAMPERED[name]
    page.goto("about:blank")
    console = open_app(page, live_app[1] + fragment)
    page.wait_for_function("() => document.querySelector('#link-notice')?.innerText.includes('could not be used')",
                           timeout=60_000)
    notice = page.locator("#link-notice").inner_text()
    for words in expected:
        assert words in notice, (words, notice)
    assert len(notice) < 2_000
    if name == "script-in-the-prompt":
        assert page.get_by_label("Prompt", exact=True).input_value().startswith("<script>window.__pwned=1")
    assert injected_elements(page) == {"pwned": None, "imgs": 0, "scripts": 0, "handlers": 0, "iframes": 0}
    assert page.locator("#link-notice a").count() == 0, "what a link held is never made a link"
    if "tab=attention" in fragment:  # the link's tab opens once its view is drawn
        page.wait_for_function("() => [...document.querySelectorAll('[role=tab]')].some(t => t.textContent.trim() "
                               "=== 'Attention' && t.getAttribute('aria-selected') === 'true')", timeout=60_000)
    open_tab(page, "Generate")
    set_slider(page, "Max new tokens", 4)
    assert generate(page).strip(), "the page works after a bad link"
    assert live_app[0].manager.require().name == "gutenberg-gpt"
    assert console.errors == []


# ----------------------------------------------------------------------------- projector mode


def inside_viewport(page, selector: str) -> dict:
    """The element's box, after the page is scrolled to its top; asserts it lies inside the viewport."""
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    assert box is not None, f"{selector} is not on the page"
    assert box["y"] >= 0 and box["x"] >= 0, (selector, box)
    assert box["y"] + box["height"] <= size["height"] + 1 and box["x"] + box["width"] <= size["width"] + 1, \
        f"{selector} reaches past the {size['width']}x{size['height']} screen: {box}"
    return box


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)], ids=["1280x800", "1920x1080"])
def test_projector_mode_shows_each_tabs_main_figure_without_scrolling(browser, live_app, size):
    from browser_helpers import open_app

    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    try:
        page = context.new_page()
        page.set_default_timeout(90_000)
        console = open_app(page, live_app[1])
        set_seed(page, 3)  # a known text (the settings are hidden in projector mode)
        page.get_by_label("Projector mode").check()
        page.wait_for_function("() => document.body.classList.contains('projector')")
        assert not page.locator("#model-row").is_visible() and not page.get_by_label("Temperature").first.is_visible()
        # Generate: the probability-coloured tokens of a text of the default length
        generate(page)
        page.wait_for_function("n => document.querySelectorAll('#token-view .tok').length === n",
                               arg=tokens_generated(stats_text(page)))
        inside_viewport(page, "#token-view")
        # Samples: the cards
        open_tab(page, "Samples")
        seed_box = page.get_by_label("Seed of the first sample", exact=True)
        seed_box.fill("11")
        seed_box.press("Tab")
        page.get_by_role("button", name="Generate samples").click()
        page.wait_for_function("() => { const c = document.querySelectorAll('#samples .card'); return c.length && "
                               "[...c].every(x => x.querySelector('.head').textContent.includes('done')); }",
                               timeout=120_000)
        inside_viewport(page, "#samples .card")
        # Attention: the heatmap, drawn on the tab's first visit
        open_tab(page, "Attention")
        wait_for_plot_with_data(page, "#attention-plot")
        inside_viewport(page, "#attention-plot .js-plotly-plot")
        if size == (1920, 1080):
            screenshot(page, "projector-attention-1920", docs_name="projector")
        # Next token: the bars
        open_tab(page, "Next token")
        page.get_by_role("button", name="Show the next token").click()
        wait_for_plot_with_data(page, "#next-token-plot")
        inside_viewport(page, "#next-token-plot .js-plotly-plot")
        # 8-bit vs full: the comparison
        open_tab(page, "8-bit vs full")
        page.get_by_role("button", name="Compare 8-bit with full precision").click()
        wait_for_plot_with_data(page, "#precision-plot", timeout_s=180)
        inside_viewport(page, "#precision-plot .js-plotly-plot")
        # and back: the normal page again
        page.get_by_label("Projector mode").uncheck()
        page.wait_for_function("() => !document.body.classList.contains('projector')")
        assert page.locator("#model-row").is_visible()
        assert console.errors == []
    finally:
        context.close()


def test_a_120_token_heatmap_labels_every_token_in_readable_text_at_1920_wide(browser, live_app):
    from browser_helpers import open_app

    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    try:
        page = context.new_page()
        page.set_default_timeout(90_000)
        console = open_app(page, live_app[1])
        open_tab(page, "Attention")
        text = " ".join(["The old sea captain looked at the boy and said, come with me."] * 8)
        page.locator("#attention-text textarea").fill(text)
        page.get_by_role("button", name="Show attention").click()
        page.wait_for_function("() => { const g = document.querySelector('#attention-plot .js-plotly-plot'); "
                               "return g && g.data && g.data.length && g.data[0].x.length >= 100; }")
        n = page.evaluate("() => document.querySelector('#attention-plot .js-plotly-plot').data[0].x.length")
        assert 100 <= n <= 128, n
        drawn = page.evaluate("""() => {
          const g = document.querySelector('#attention-plot .js-plotly-plot');
          const labels = ax => [...g.querySelectorAll('.' + ax + 'tick text')].filter(t => t.textContent.trim());
          const px = ax => Math.min(...labels(ax).map(t => parseFloat(getComputedStyle(t).fontSize)));
          const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
          return {x: labels('x').length, y: labels('y').length, xpx: px('x'), ypx: px('y'),
                  cellw: xa._length / g.data[0].x.length, cellh: ya._length / g.data[0].y.length};
        }""")
        assert drawn["x"] == n and drawn["y"] == n, drawn  # every token labelled on both axes
        assert drawn["xpx"] >= 12 and drawn["ypx"] >= 12, drawn
        assert drawn["cellw"] >= 8 and drawn["cellh"] >= 8, drawn
        assert console.errors == []
    finally:
        context.close()
