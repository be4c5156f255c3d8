"""The Samples tab: N continuations of one prompt streamed side by side, each with its seed, optionally
a second row under another temperature and top-p with the same seeds; any sample re-runs alone in the
Generate tab. Also the public ``/samples`` endpoint."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from typing import NamedTuple

import gradio as gr

from demo.analysis.side_by_side import FIRST_SEED, N_SAMPLES, SAMPLE_TOKENS, results, sample_set
from demo.core.errors import ValidationError
from demo.core.sampling import MAX_NEW_TOKENS, NAMES, SETTING, validate_sampling
from demo.core.validation import check_text
from demo.runtime.generation import StopRequests, stream_samples
from demo.runtime.pool import ModelManager
from demo.ui.common import (
    PRIVATE,
    AppContext,
    current_session,
    event_field,
    event_time,
    stop_owner,
    user_errors,
    with_parameters,
)
from demo.ui.inputs import PRESET_TARGETS, preset_radio, preset_values, sampling_inputs, setting_input

DEFAULT_PROMPT = "Once upon a time, in a kingdom by the sea,"
INTRO = """**Sampling is a roll of the dice.** Here the model continues the same prompt several times at once,
each sample with its own seed (the dice). What the samples share is what the model is sure of; where they part
is where it was not. Tick **Second row** to run the *same seeds* under another temperature and top-p: only the
settings differ, so you see what they do. Every sample shows its seed: **Re-run alone** generates it again in the
Generate tab, alone, with its seed and settings: the same text, now with its coloured tokens and steps."""
LOCAL_LABELS = {"do_sample": "Sample (off = greedy: every sample the same)", "seed": "Seed (not used here)"}
# /samples' parameters: the prompt, how many, the first seed, their length, the sampling settings
# (but the seed), then the second row.
SAMPLE_SETTINGS = [n for n in NAMES if n != "seed"]
API_PARAMETERS = ["prompt", "n", "first_seed", "max_new_tokens", *SAMPLE_SETTINGS, "compare", "temperature_b",
                  "top_p_b"]
SAMPLES_CSS = """
.samples { display: grid; gap: 10px; grid-template-columns: repeat(var(--cols, 4), minmax(0, 1fr)); }
@media (max-width: 700px) { .samples { grid-template-columns: 1fr; } }
.samples .rowhead { grid-column: 1 / -1; font-weight: 600; margin-top: 6px; }
.samples .card { border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px; padding: 8px 10px;
                 display: flex; flex-direction: column; gap: 6px; }
.samples .head { font-size: 0.85rem; opacity: 0.8; display: flex; justify-content: space-between; gap: 6px; }
.samples .text { white-space: pre-wrap; word-break: break-word; line-height: 1.5; }
.samples .prompt { opacity: 0.55; }
.samples button.rerun { align-self: flex-start; font-size: 0.8rem; padding: 2px 8px; border-radius: 6px;
                        border: 1px solid var(--border-color-primary, #ccc); background: transparent; cursor: pointer; }
"""
SAMPLES_JS = """
element.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-sample]');
  if (b) trigger('rerun', {index: parseInt(b.dataset.sample)});
});
"""


# ----------------------------------------------------------------------------- formatting (pure)


def row_title(settings: dict) -> str:
    if not settings.get("do_sample", True):
        return "Greedy (sampling off): every seed gives the same text"
    return f"Temperature {settings['temperature']:g} · top-p {settings['top_p']:g}"


def samples_html(data: dict | None) -> str:
    """Cards of the samples (escaped text), one row per setting; each with its seed and a re-run button."""
    if not data or not data.get("samples"):
        return "<div class='samples'><div class='rowhead'>Press <b>Generate samples</b>.</div></div>"
    prompt = html.escape(str(data.get("prompt", ""))[-200:])
    rows = max(s["row"] for s in data["samples"]) + 1
    cols = min(4, len(data["samples"]) // rows)  # a row per setting (two lines of 4 for 8 seeds)
    parts = [f"<div class='samples' style='--cols: {cols}'>"]
    for i, s in enumerate(data["samples"]):
        if rows > 1 and (i == 0 or data["samples"][i - 1]["row"] != s["row"]):
            parts.append(f"<div class='rowhead'>Row {'AB'[s['row']]}: {html.escape(row_title(s['settings']))}</div>")
        state = ("stopped" if s.get("stop_reason") == "stopped" else "done") if s["done"] else "…"
        parts.append(
            f"<div class='card' data-index='{i}'><div class='head'><span>seed <b>{s['seed']}</b></span>"
            f"<span>{s['tokens']} tokens {state}</span></div>"
            f"<div class='text'><span class='prompt'>{prompt}</span>{html.escape(s['text'])}</div>"
            f"<button class='rerun' data-sample='{i}' title='Generate it again alone in the Generate tab, with "
            f"this seed and these settings'>↻ Re-run alone</button></div>")
    parts.append("</div>")
    return "".join(parts)


# ----------------------------------------------------------------------------- handlers


class SamplesHandlers:
    def __init__(self, manager: ModelManager, zero_gpu: bool = False, stops: StopRequests | None = None):
        self.manager, self.zero_gpu = manager, zero_gpu
        self.stops = stops or StopRequests()

    def stop(self) -> None:
        """Stop this visitor's samples requested before this Stop; they keep what they have generated."""
        self.stops.request(stop_owner("samples"), event_time())

    @user_errors
    def generate(self, prompt, n, first_seed, max_new_tokens, *values) -> Iterator[tuple[str, dict | None]]:
        """Stream N samples of `prompt` together: (cards, the samples' data so far; the last has them all).
        ``values``: the settings in :data:`SAMPLE_SETTINGS` order, then compare, temperature_b, top_p_b."""
        stop = self.stops.signal(stop_owner("samples"), event_time())
        settings, (compare, temperature_b, top_p_b) = values[:len(SAMPLE_SETTINGS)], values[len(SAMPLE_SETTINGS):]
        if self.zero_gpu:  # the batched loop runs where the model is; on ZeroGPU that is a GPU call per slice
            raise ValidationError("samples side by side are not available on ZeroGPU hardware yet: generate them one "
                                  "by one with their seeds in the Generate tab")
        params = validate_sampling(**dict(zip(SAMPLE_SETTINGS, settings)))
        samples = sample_set(prompt, n, first_seed, max_new_tokens, params, compare, temperature_b, top_p_b)
        with self.manager.use(current_session()) as loaded:
            stream = stream_samples(loaded, samples.requests(), stop=stop)
            try:
                for updates in stream:  # the data too, so a re-run never picks up an earlier set's sample
                    data = results(samples, updates)
                    yield samples_html(data), data
            finally:
                stream.close()  # Stop, a closed tab: every sample leaves the batch at the next forward pass

    @staticmethod
    def rerun_values(data, index) -> dict:
        """What re-running one sample alone sets in the Generate tab: its prompt, max new tokens, and its
        settings and seed (by name), each checked (the samples' data comes back from the page)."""
        samples = data.get("samples") if isinstance(data, dict) else None
        if not isinstance(samples, list) or isinstance(index, bool) or not isinstance(index, int) \
                or not 0 <= index < len(samples):
            raise ValidationError("generate samples first, then choose one to re-run")
        sample = samples[index]
        s = sample.get("settings") if isinstance(sample, dict) else None
        if not isinstance(s, dict):
            raise ValidationError("this sample has no settings to re-run: generate the samples again")
        params = validate_sampling(**{n: s.get(n, SETTING[n].default) for n in NAMES})
        values = {n: getattr(params, n) for n in NAMES}
        values["seed"] = -1 if params.seed is None else params.seed  # the Seed box's "random"
        return {"prompt": check_text("the samples' prompt", data.get("prompt")),
                "max_new_tokens": MAX_NEW_TOKENS.check(data.get("max_new_tokens"), slider=True), **values}

    def rerun_event(self, targets: dict) -> Callable:
        """The handler of a card's Re-run button: {component: value} of ``targets`` (the Generate tab's
        inputs by the names of :meth:`rerun_values`)."""
        @user_errors
        def rerun(data, evt: gr.EventData):
            index = event_field(evt, "index")
            return {targets[name]: value for name, value in self.rerun_values(data, index).items()}

        return rerun


# ----------------------------------------------------------------------------- layout


class SamplesLayout(NamedTuple):
    prompt: gr.Textbox
    n: gr.components.Component
    first_seed: gr.components.Component
    max_new_tokens: gr.components.Component
    generate: gr.Button
    stop: gr.Button
    preset: gr.Radio
    settings: dict  # sampling setting name -> row A's input
    compare: gr.Checkbox
    temperature_b: gr.components.Component
    top_p_b: gr.components.Component
    view: gr.HTML
    data: gr.JSON  # the last samples' data (what a re-run reads)

    @property
    def inputs(self) -> list:
        """/samples' inputs, in API_PARAMETERS order."""
        return [self.prompt, self.n, self.first_seed, self.max_new_tokens,
                *[self.settings[k] for k in SAMPLE_SETTINGS], self.compare, self.temperature_b, self.top_p_b]


def layout() -> SamplesLayout:
    gr.Markdown(INTRO, elem_classes="tab-intro")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt for the samples", value=DEFAULT_PROMPT, lines=2, max_lines=8,
                                elem_id="samples-prompt")
            with gr.Row():
                n = setting_input(N_SAMPLES, label="Samples (seeds)")
                first_seed = setting_input(FIRST_SEED, value=FIRST_SEED.default)
                max_new_tokens = setting_input(SAMPLE_TOKENS)
            with gr.Row():
                generate = gr.Button("Generate samples", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2, elem_classes="settings-col"), gr.Accordion("Sampling settings (row A)", open=True):
            preset = preset_radio()
            settings = sampling_inputs(labels=LOCAL_LABELS)
            settings["seed"].visible = False  # each sample has its own seed (above)
            with gr.Group():
                compare = gr.Checkbox(False, label="Second row: the same seeds under another temperature and top-p")
                # row B's sliders are active only while the second row is on
                temperature_b = setting_input(SETTING["temperature"], value=1.2, label="Temperature (row B)",
                                              interactive=False)
                top_p_b = setting_input(SETTING["top_p"], value=1.0, label="Top-p (row B)", interactive=False)
    view = gr.HTML(samples_html(None), css_template=SAMPLES_CSS, js_on_load=SAMPLES_JS, elem_id="samples")
    data = gr.JSON(visible=False, label="samples")
    return SamplesLayout(prompt, n, first_seed, max_new_tokens, generate, stop, preset, settings, compare,
                         temperature_b, top_p_b, view, data)


class SamplesTab(NamedTuple):
    view: gr.HTML
    data: gr.JSON  # the last samples' data (what a re-run reads)
    handlers: SamplesHandlers


def wire(ui: SamplesLayout, h: SamplesHandlers, ctx: AppContext) -> SamplesTab:
    ui.generate.click(with_parameters(h.generate, API_PARAMETERS), ui.inputs, [ui.view, ui.data], api_name="samples",
                      **ctx.samples_queue)
    ui.stop.click(h.stop, None, None, **PRIVATE, **ctx.stop_queue)  # the samples end themselves, text kept
    ui.preset.input(preset_values, ui.preset, [ui.settings[k] for k in PRESET_TARGETS], **PRIVATE)
    ui.compare.change(row_b_controls, ui.compare, [ui.temperature_b, ui.top_p_b], queue=False, **PRIVATE)
    return SamplesTab(ui.view, ui.data, h)


def row_b_controls(compare: bool):
    """Row B's sliders follow the Second row box: they take input only while it is ticked."""
    on = bool(compare)
    return gr.Slider(interactive=on), gr.Slider(interactive=on)


def build(tab: gr.Tab, ctx: AppContext) -> SamplesTab:
    """The Samples tab, built inside ``tab``."""
    return wire(layout(), SamplesHandlers(ctx.manager, ctx.settings.zero_gpu, ctx.stops), ctx)
