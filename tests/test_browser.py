"""End-to-end tests in a real browser: Debian chromium (headless, no display needed) driven by
Playwright against the app serving the bundled model on localhost.

They do what a person does: load the page, type a prompt, press Generate and Stop, move sliders,
pick presets, open every tab, click tokens, switch model, and type HTML. Screenshots of each tab go
to test-artifacts/browser/; ``GPT_EXPLORER_UPDATE_SCREENSHOTS=1 python -m pytest -m browser``
also refreshes the README's pictures in docs/screenshots/.
"""

from __future__ import annotations

import gradio as gr
import pytest
from browser_helpers import (
    DONE_MARKERS,
    choose_preset,
    click_generate,
    error_badges,
    generate,
    growth_samples,
    injected_elements,
    number_input,
    open_tab,
    output_text,
    screenshot,
    scroll_to,
    set_prompt,
    set_seed,
    set_slider,
    stats_text,
    tokens_generated,
    wait_for_output,
    wait_for_plot_with_data,
    wait_for_stats,
    wait_generation_done,
    wait_until,
)
from waiting import ModelGate

from demo.core.attention_views import VIEWS
from demo.runtime.generation import live_generation_threads

pytestmark = pytest.mark.browser

PROMPT = "The old sea captain looked at the boy and said,"
GEN_SLIDERS = ["Max new tokens", "Temperature", "Top-k", "Top-p (nucleus)", "Min-p", "Repetition penalty",
               "No-repeat n-gram size"]
STATUS = '[data-testid="markdown"].model-status'


# ----------------------------------------------------------------------------- the page and the Generate tab


def test_page_loads_without_console_errors_and_shows_its_controls(page, live_app):
    assert page.title() == "GPT Explorer"
    assert "gutenberg-gpt" in page.locator(STATUS).inner_text()
    tabs = page.get_by_role("tablist").first.get_by_role("tab").all_inner_texts()  # the page's tabs
    assert [t.strip() for t in tabs] == ["Generate", "Samples", "Attention", "Next token", "8-bit vs full", "About"]
    # every sampling slider is labelled and starts at the value the app gives it
    expected = {b.label: b.value for b in live_app[0].blocks.values() if isinstance(b, gr.Slider)}
    for label in GEN_SLIDERS:
        assert float(number_input(page, label).input_value()) == pytest.approx(float(expected[label])), label
    assert page.get_by_label("Balanced", exact=True).filter(visible=True).first.is_checked()
    # Max new tokens follows the model: the bundled model's 512-token window leaves room for 511 at most
    page.wait_for_function("() => [...document.querySelectorAll('input[type=range]')].some(r => "
                           "(r.getAttribute('aria-label') || '').includes('Max new tokens') && r.max === '511')")
    page.evaluate("() => document.fonts.ready.then(() => true)")  # fonts that fail to load would log errors
    screenshot(page, "page-loaded")
    assert page.console.errors == []


def test_generate_streams_growing_text_then_finishes(page, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 200)
    # the model is held at its 30th forward pass: the page must show the text so far while the model
    # is still generating (however slow the machine, however many updates the browser merges)
    with ModelGate(live_app[0].manager.require().model, hold_at=30) as gate:
        before = click_generate(page)
        assert gate.wait_held()
        partial = wait_for_output(page, "t.length > 0")
        assert not any(m in stats_text(page) for m in DONE_MARKERS), "the page says done while the model runs"
        gate.release()
        text = wait_generation_done(page, before)
    assert text.startswith(partial) and len(text) > len(partial), "the streamed text grows into the final text"
    lengths = [n for _, n in growth_samples(page)]
    assert lengths == sorted(lengths), "the streamed text only grows"
    stats = stats_text(page)
    assert tokens_generated(stats) == 200 or "model ended the text" in stats
    assert "first token after" in stats and "tokens/s" in stats
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "generate", docs_name="generate")
    if page.locator("#token-view").count():  # the probability-coloured text of this generation
        page.wait_for_function("n => document.querySelectorAll('#token-view .tok').length === n",
                               arg=tokens_generated(stats))
        scroll_to(page, "#token-view", 120)
        screenshot(page, "token-view", docs_name="token-view")
    assert page.console.errors == []


# Stop at every moment: the text stays visible with a "stopped" status, no error badge, the coloured
# view holds what was generated, and the model runs no further step. The model is held at a chosen
# forward pass, so each moment is a state the test sets up, not a race with the clock.


def press_stop(page) -> None:
    page.get_by_role("button", name="Stop", exact=True).click()


def assert_stopped_cleanly(page, live_app, gate: ModelGate, held_pass: int) -> str:
    """After a Stop pressed while the model waits at ``held_pass``: the page's state; then the model
    is released and must stop there. Returns the text shown."""
    stats = wait_for_stats(page, "stopped after")  # the stream ended itself while the model still waits
    n = tokens_generated(stats)
    assert n is not None and n < held_pass and f"stopped after {n} tokens" in stats, stats
    assert live_app[0].manager.require().scheduler.live == 0, "the model's row is still in the batch"
    page.wait_for_function("() => !window.__gen.busy")
    page.wait_for_function("n => document.querySelectorAll('#token-view .tok').length === n", arg=n)
    assert error_badges(page) == [], "Stop must not look like a crash"
    assert page.locator("#output textarea").is_visible()
    gate.release()
    assert wait_until(lambda: not live_generation_threads()), "the model thread never ended"
    assert gate.calls == held_pass, "the model ran another step after Stop"
    return output_text(page)


def test_stop_before_the_first_token_ends_with_an_empty_stopped_text(page, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 300)
    with ModelGate(live_app[0].manager.require().model, hold_at=1) as gate:  # the prompt's own pass
        click_generate(page)
        assert gate.wait_held()
        press_stop(page)
        text = assert_stopped_cleanly(page, live_app, gate, held_pass=1)
    assert text == "" and "stopped after 0 tokens" in stats_text(page)
    assert page.console.errors == []


def test_stop_mid_stream_keeps_the_text_and_its_coloured_view(page, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 300)
    with ModelGate(live_app[0].manager.require().model, hold_at=30) as gate:
        click_generate(page)
        assert gate.wait_held()
        shown = wait_for_output(page, "t.length > 0")
        press_stop(page)
        text = assert_stopped_cleanly(page, live_app, gate, held_pass=30)
    assert text.startswith(shown) and text.strip()
    screenshot(page, "stopped")
    # what was generated stays usable: a token of the stopped text opens its step
    page.locator("#token-view .tok").nth(1).click()
    page.wait_for_selector('#token-view .tok.sel[data-pos="1"]')
    assert error_badges(page) == [] and page.console.errors == []


def test_stop_as_the_stream_ends_gives_either_ending_cleanly(page, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 12)
    with ModelGate(live_app[0].manager.require().model, hold_at=12) as gate:  # the pass of the last token
        before = click_generate(page)
        assert gate.wait_held()
        press_stop(page)
        gate.release()  # the last token and the Stop race: either ending is right, an error is not
        text = wait_generation_done(page, before)
    stats = stats_text(page)
    assert ("stopped after" in stats and tokens_generated(stats) == 11) or "reached max new tokens" in stats, stats
    assert text.strip() and error_badges(page) == []
    assert wait_until(lambda: not live_generation_threads()), "the model thread never ended"
    assert page.console.errors == []


def test_stop_after_the_end_changes_nothing_and_the_next_generation_runs(page, live_app):
    stops = live_app[0].stops
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 10)
    text = generate(page)
    stats = stats_text(page)
    taken = stops.count
    press_stop(page)
    assert wait_until(lambda: stops.count > taken), "the Stop never reached the server"
    assert output_text(page) == text and stats_text(page) == stats and error_badges(page) == []
    assert generate(page).strip()  # a Stop that came after a generation does not stop the next one
    assert "stopped" not in stats_text(page)
    assert page.console.errors == []


def test_greedy_preset_gives_the_same_text_twice(page):
    choose_preset(page, "Greedy")
    sample_box = page.get_by_label("Sample (off = greedy: always the most likely token)")
    page.wait_for_function("el => !el.checked", arg=sample_box.element_handle())
    assert float(number_input(page, "Repetition penalty").input_value()) == 1.0
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 24)
    first = generate(page)
    second = generate(page)
    assert first.strip() and first == second


def test_seed_and_max_new_tokens_change_the_result(page):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 24)
    set_seed(page, 11)
    a = generate(page)
    assert "seed 11" in stats_text(page)
    set_seed(page, 12)
    b = generate(page)
    assert "seed 12" in stats_text(page)
    assert a != b, "a different seed should give a different text"
    set_seed(page, 11)
    set_slider(page, "Max new tokens", 7)
    c = generate(page)
    assert tokens_generated(stats_text(page)) == 7 or "model ended the text" in stats_text(page)
    assert a.startswith(c) and len(c) < len(a), "the same seed replays the same tokens"


# ----------------------------------------------------------------------------- the other tabs


def test_attention_tab_draws_heatmaps(page, live_app):
    open_tab(page, "Attention")
    one = wait_for_plot_with_data(page, "#attention-plot")
    assert "heatmap" in one["types"] and one["nonzero"] >= 10, one
    scroll_to(page, "#attention-plot", 250)
    screenshot(page, "attention", docs_name="attention")
    page.get_by_label("All heads of a layer", exact=True).check()
    page.wait_for_function("n => { const g = document.querySelector('#attention-plot .js-plotly-plot'); "
                           "return g && g.data && g.data.length > n; }", arg=len(one["types"]), timeout=60_000)
    grid = wait_for_plot_with_data(page, "#attention-plot")
    assert grid["types"].count("heatmap") >= 2 and grid["nonzero"] > one["nonzero"], grid
    screenshot(page, "attention-all-heads")
    assert page.console.errors == []


def test_an_example_fills_the_prompt_and_a_clicked_token_opens_its_view(page, live_app):
    """Two private events whose data the page makes: an example's index, a token's place in the strip."""
    from demo.ui.tabs.generate import EXAMPLES

    page.locator("#generate-examples").get_by_role("button", name=EXAMPLES[1], exact=True).click()
    page.wait_for_function("t => [...document.querySelectorAll('textarea')].some(a => a.value === t)", arg=EXAMPLES[1])
    assert page.get_by_label("Prompt", exact=True).input_value() == EXAMPLES[1]
    open_tab(page, "Attention")
    wait_for_plot_with_data(page, "#attention-plot")
    page.locator("#attention-strip [role=button]").nth(2).click()
    one_token = page.get_by_label(VIEWS["token"], exact=True).filter(visible=True).first
    page.wait_for_function("() => [...document.querySelectorAll('#attention-view input')].some(i => i.checked && "
                           "i.value === 'token')")
    assert one_token.is_checked()
    assert page.console.errors == []


def test_layer_and_head_follow_the_arrow_keys_and_a_typed_number(page, live_app):
    """The plot follows every way of moving a slider, not only a drag: the arrow keys on the slider, and a
    number typed in its box (before the box loses focus)."""
    open_tab(page, "Attention")
    wait_for_plot_with_data(page, "#attention-plot")
    note = "() => document.querySelector('#attention-note').innerText"
    page.wait_for_function(f"() => ({note})().includes('layer 0, head 0')")
    page.locator('input[aria-label="range slider for Layer (0 = first)"]').focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => ({note})().includes('layer 1, head 0')")
    head_box = page.locator('input[aria-label="number input for Head"]')
    head_box.fill("2")  # typed; the box keeps the focus
    page.wait_for_function(f"() => ({note})().includes('layer 1, head 2')")
    assert page.console.errors == []


def test_next_token_tab_draws_bars_and_appends_tokens(page, live_app):
    open_tab(page, "Next token")
    bars = wait_for_plot_with_data(page, "[role=tabpanel]")
    assert "bar" in bars["types"] and bars["nonzero"] >= 5, bars
    text_box = page.get_by_label("Text", exact=True).filter(visible=True).first
    before = text_box.input_value()
    page.get_by_role("button", name="Most likely").click()
    page.wait_for_function("([el, t]) => el.value !== t && el.value.startsWith(t)",
                           arg=[text_box.element_handle(), before], timeout=60_000)
    wait_for_plot_with_data(page, "[role=tabpanel]")
    scroll_to(page, "[role=tabpanel] .js-plotly-plot", 280)
    screenshot(page, "next-token", docs_name="next-token")
    assert page.console.errors == []


def test_about_tab(page):
    open_tab(page, "About")
    assert page.get_by_text("What is this?").is_visible()
    screenshot(page, "about")


def test_generated_text_opens_in_the_attention_and_next_token_tabs(page, live_app):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 12)
    out = generate(page)
    page.get_by_role("button", name="See its attention").click()
    page.wait_for_function("t => { const el = document.querySelector('#attention-text textarea'); "
                           "return el && el.value === t; }", arg=PROMPT + out, timeout=30_000)
    wait_for_plot_with_data(page, "#attention-plot")
    open_tab(page, "Generate")
    page.get_by_role("button", name="Explore the next token").click()
    page.wait_for_function("n => [...document.querySelectorAll('[role=tab]')].some(t => t.textContent.trim() === n "
                           "&& t.getAttribute('aria-selected') === 'true')", arg="Next token")
    text_box = page.get_by_label("Text", exact=True).filter(visible=True).first
    page.wait_for_function("([el, t]) => el.value === t", arg=[text_box.element_handle(), PROMPT + out])
    wait_for_plot_with_data(page, "[role=tabpanel]")
    assert page.console.errors == []


def test_probability_view_and_branching_by_clicking(page):
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 12)
    set_seed(page, 5)
    out = generate(page)
    n = tokens_generated(stats_text(page))
    toks = page.locator("#token-view .tok")
    page.wait_for_function("n => document.querySelectorAll('#token-view .tok').length === n", arg=n)
    assert "".join(toks.evaluate_all("els => els.map(e => e.firstChild.textContent)")).replace("↵", "") == out
    colours = set(toks.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)"))
    assert colours and "rgba(0, 0, 0, 0)" not in colours, "every token is coloured by its probability"
    toks.nth(2).hover()
    tip = toks.nth(2).locator(".tip")
    assert tip.is_visible() and "alternatives" in tip.inner_text()
    screenshot(page, "token-view-hover")
    toks.nth(2).click()
    page.wait_for_selector('#token-view .tok.sel[data-pos="2"]', timeout=30_000)
    assert page.get_by_label("Token to change").input_value().startswith("#3")
    page.wait_for_function("() => [...document.querySelectorAll('input[type=radio]')].some(r => r.checked && "
                           "r.offsetParent && /^[0-9]+$/.test(r.value))", timeout=30_000)
    page.get_by_role("button", name="Branch").click()
    prompt_box = page.get_by_label("Prompt", exact=True)
    page.wait_for_function("([el, p]) => el.value !== p && el.value.startsWith(p)",
                           arg=[prompt_box.element_handle(), PROMPT], timeout=30_000)
    branched = prompt_box.input_value()
    assert branched != PROMPT + out and len(branched) > len(PROMPT)
    page.get_by_text("Cut after token #2").wait_for()
    continued = generate(page)
    assert continued.strip()
    assert page.console.errors == []


# ----------------------------------------------------------------------------- models and hostile input


def test_switching_to_an_unavailable_model_shows_a_clear_error_and_keeps_serving(page, live_app):
    menu = page.get_by_label("Model", exact=True).first
    menu.click()
    # the menu marks what this server does not let visitors load (a Hub model, downloads off)
    page.get_by_role("option", name="gpt2 (not available to visitors here)", exact=True).click()
    page.get_by_role("button", name="Load model").click()
    status = page.locator(STATUS)
    page.wait_for_function("s => document.querySelector(s).innerText.includes('lets visitors choose only')",
                           arg=STATUS, timeout=60_000)
    text = status.inner_text()
    assert "❌" in text and "gpt2" in text and text.startswith("gutenberg-gpt"), text
    # and after the refusal it shows the model that serves this page
    page.wait_for_function("el => el.value === 'gutenberg-gpt'", arg=menu.element_handle())
    assert live_app[0].manager.require().name == "gutenberg-gpt"
    screenshot(page, "model-error")
    set_prompt(page, PROMPT)
    set_slider(page, "Max new tokens", 5)
    assert generate(page).strip(), "the bundled model keeps serving"


PAYLOAD = ('It was <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> '
           '<svg onload="window.__pwned=3"></svg> <b>bold</b> the')


def test_html_in_the_prompt_is_shown_as_text_and_never_run(page, live_app):
    set_prompt(page, PAYLOAD)
    set_slider(page, "Max new tokens", 8)
    generate(page)
    assert page.get_by_label("Prompt", exact=True).input_value() == PAYLOAD
    page.wait_for_function("() => document.querySelectorAll('#token-view .tok').length > 0")
    assert "<img src=x" in page.locator("#token-view .prompt").first.text_content()
    page.get_by_role("button", name="See its attention").click()
    wait_for_plot_with_data(page, "#attention-plot")
    assert page.locator("#attention-text textarea").input_value().startswith(PAYLOAD)
    open_tab(page, "Generate")
    page.get_by_role("button", name="Explore the next token").click()
    wait_for_plot_with_data(page, "[role=tabpanel]")
    page.get_by_label("Look up a token or word").fill('<img src=x onerror="window.__pwned=4">')
    page.get_by_role("button", name="Look up").click()
    page.get_by_text("It is now in the").wait_for(timeout=30_000)  # the answer, with the payload in it, is drawn
    assert injected_elements(page) == {"pwned": None, "imgs": 0, "scripts": 0, "handlers": 0, "iframes": 0}
    assert page.console.errors == []
