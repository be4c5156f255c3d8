"""The Generate tab: prompt, sampling settings, streamed output with Stop, the stats line, and under it
the probability-coloured output (each generated token coloured by how likely it was, with branching).
Also the public ``/generate`` endpoint."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import gradio as gr

from .. import plots_attention, steps
from ..attention import AttentionResult, AttentionUnavailable, compute_attention
from ..backend import ModelManager
from ..cache import ModelCache
from ..errors import ValidationError
from ..generation import (
    TOKEN_COLUMNS,
    GenerationRequest,
    GenerationUpdate,
    SliceState,
    StopRequests,
    branch_prompt,
    check_record,
    generate_slice,
    generation_record,
    has_tokens,
    record_rows,
    slice_update,
    start_slices,
    stream_generate,
    validate_request,
)
from ..next_token import forward_last_logits
from ..plots_next_token import (
    TIMELINE_NOTE,
    TOKEN_VIEW_CSS,
    TOKEN_VIEW_JS,
    bars_figure,
    code_label,
    empty_figure,
    fmt_prob,
    timeline_figure,
    token_view_html,
)
from ..sampling import MAX_NEW_TOKENS, SETTINGS, validate_sampling
from ..tokens import display_token
from ..validation import check_index
from ..zerogpu import SLICE_S, slice_duration, slice_tokens
from .common import (
    PRIVATE,
    AppContext,
    current_session,
    event_time,
    export_controls,
    stop_owner,
    user_errors,
    with_parameters,
)
from .inputs import PRESET_TARGETS, preset_radio, preset_values, sampling_inputs, setting_input

STEP_BARS = 20  # bars in the view of a step (the drawn token is added when it is not among them)
EXAMPLES = [
    "It was a dark and stormy night, and",
    "The old sea captain looked at the boy and said,",
    "Alice was beginning to get very tired of",
    "In the morning the village woke to find that",
    "Once upon a time, in a kingdom by the sea,",
]
# /generate's parameters, in the order the API has always had: the prompt and its length, the
# numeric sampling settings, then the sample/greedy switch and the seed (named as in transformers).
SAMPLING_ORDER = ([s.name for s in SETTINGS if s.kind in ("float", "int")]
                  + [s.name for s in SETTINGS if s.kind in ("bool", "seed")])
API_PARAMETERS = ["prompt", MAX_NEW_TOKENS.name, *SAMPLING_ORDER]

STEP_HELP = """**Click a token** in the coloured text (or a point of the timeline) to open the moment it was
drawn: the distribution it came from — the model's probabilities and what the sampling settings left, with
the drawn token marked — and where the model looked to produce it."""

VIEW_HELP = """Each generated token is coloured by the probability it had **when it was drawn** (after the
sampling settings). Hover a token (or focus it with Tab) to see the top alternatives. **Branching:** click a
token (or choose it below), pick another token to put in its place, then press *Branch*: the prompt
above is cut there and ends with your token — press **Generate** to continue the new branch."""


# ----------------------------------------------------------------------------- formatting (pure)


def format_stats(u: GenerationUpdate) -> str:
    parts = []
    if u.ttft_s is not None:
        parts.append(f"first token after {u.ttft_s * 1000:,.0f} ms")
    if u.tokens_per_s is not None:
        parts.append(f"{u.tokens_per_s:,.1f} tokens/s")
    parts.append(f"{u.n_tokens} tokens generated")
    if u.seed is not None:
        parts.append(f"seed {u.seed}")
    if u.done:
        parts.append({"length": "reached max new tokens", "end of text": "model ended the text",
                      "stopped": f"stopped after {u.n_tokens} tokens"}.get(u.stop_reason or "", u.stop_reason or ""))
    line = " · ".join(parts)
    if u.truncated_tokens:
        line += (f"\n\n⚠️ The prompt was longer than the model's context window: the first {u.truncated_tokens} "
                 f"tokens were dropped and the model saw the last {u.prompt_tokens}.")
    return line


# ----------------------------------------------------------------------------- handlers


class GenerateHandlers:
    """``run_slice`` set (on ZeroGPU): generation runs in slices of about a second, each its own GPU
    call (:meth:`slice`), so a Stop frees the GPU within a slice; else one streamed generation."""

    def __init__(self, manager: ModelManager, run_slice: Callable | None = None, stops: StopRequests | None = None):
        self.manager = manager
        self.run_slice = run_slice
        self.stops = stops or StopRequests()

    def stop(self) -> None:
        """Stop this visitor's generations that were requested before this Stop: each ends at its next
        check with a last update that keeps its text (see :class:`demo.generation.StopRequests`)."""
        self.stops.request(stop_owner("generate"), event_time())

    @staticmethod
    def slice(loaded, request: GenerationRequest, state: SliceState, max_tokens: int) -> SliceState:
        """One slice of a generation (runs where the model is: a ZeroGPU worker)."""
        return generate_slice(loaded, request, state, max_tokens, SLICE_S)

    @user_errors
    def generate(self, prompt, max_new_tokens, *sampling) -> Iterator[tuple[str, str, dict | None]]:
        """Stream a continuation of `prompt`. Each update is (text generated so far, stats line, the
        generation's record once it is done). ``sampling`` values come in :data:`SAMPLING_ORDER`."""
        # the event skips Gradio's preprocessing: the values are checked here, within the sliders' ranges
        stop = self.stops.signal(stop_owner("generate"), event_time())
        params = validate_sampling(slider=True, **dict(zip(SAMPLING_ORDER, sampling)))
        request = validate_request(prompt, MAX_NEW_TOKENS.check(max_new_tokens, slider=True), params)
        with self.manager.use(current_session()) as loaded:  # not unloaded while it generates
            yield from self._stream(loaded, request, stop)

    def _stream(self, loaded, request: GenerationRequest, stop: Callable[[], bool] = lambda: False
                ) -> Iterator[tuple[str, str, dict | None]]:
        if self.run_slice is None:
            stream = stream_generate(loaded, request, stop=stop)
        else:
            stream = self._sliced(loaded, request, stop)

        def record(update):  # stamped with the model that generated, even if another loads meanwhile
            return generation_record(loaded, request.prompt, update, {
                **request.sampling.as_dict(), "seed": update.seed, "max_new_tokens": request.max_new_tokens})

        try:  # the stream paces its updates (demo.generation.update_interval)
            for update in stream:
                yield update.text, format_stats(update), record(update) if update.done else None
        finally:
            stream.close()  # also on GeneratorExit (Stop, a closed tab): stops the model


    def _sliced(self, loaded, request: GenerationRequest, stop: Callable[[], bool] = lambda: False
                ) -> Iterator[GenerationUpdate]:
        """The updates of a generation made of slices; closing this generator, or a Stop, requests no
        more slices."""
        state, started = start_slices(loaded, request), time.perf_counter()
        while not state.done:
            if stop():
                yield slice_update(loaded, replace(state, done=True, stop_reason="stopped"), started)
                return
            n = slice_tokens(state.tokens_per_s, request.max_new_tokens - len(state.generated))
            state = self.run_slice(loaded, request, state, n)  # each slice on this generation's model
            yield slice_update(loaded, state, started)


class TokenViewHandlers:
    """The probability-coloured output: select a generated token, branch from it."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    @staticmethod
    def _alternatives(record: dict, pos: int) -> list[tuple[str, int]]:
        tok = record["tokens"][pos]
        out = []
        for alt in tok.get("alternatives", []):
            mark = "  (drawn)" if alt["id"] == tok["id"] else ("  (was filtered)" if alt["prob"] <= 0 else "")
            out.append((f"{alt['label']}   {fmt_prob(alt['prob'])}{mark}", int(alt["id"])))
        return out

    def on_generation(self, record):
        """(view, position dropdown, alternatives, message, timeline, step view cleared) for a new
        generation's record."""
        cleared = (STEP_EMPTY, empty_figure(STEP_PROMPT), empty_figure(STEP_PROMPT), "")
        if not has_tokens(record):
            return (token_view_html(None), gr.Dropdown(choices=[], value=None), gr.Radio(choices=[], value=None), "",
                    timeline_figure(None), *cleared)
        positions = [(f"#{i + 1}  {t['label']}   {fmt_prob(t['prob'])}", i) for i, t in enumerate(record["tokens"])]
        return (token_view_html(record), gr.Dropdown(choices=positions, value=None),
                gr.Radio(choices=[], value=None), "", timeline_figure(record), *cleared)

    @user_errors
    def select(self, record, position):
        """(position, alternatives radio, view with the token outlined, timeline with it marked)."""
        record = check_record(record)
        pos = check_index("position", position, len(record["tokens"]))
        alts = self._alternatives(record, pos)
        drawn = record["tokens"][pos]["id"]
        first_other = next((i for _, i in alts if i != drawn), None)
        return (pos, gr.Radio(choices=alts, value=first_other), token_view_html(record, selected=pos),
                timeline_figure(record, pos))

    def clicked(self, record, evt: gr.EventData):
        return self.select(record, getattr(evt, "pos", None) if evt is not None else None)

    @user_errors
    def branch(self, record, position, token_id):
        """(new prompt, message): the prompt cut before `position`, ending with `token_id`."""
        loaded = self.manager.require(current_session())
        record = check_record(record)
        if position is None or position == "":
            raise ValidationError("click a token in the coloured text (or choose one in the list) first")
        if token_id is None or token_id == "":
            raise ValidationError("choose the token to put in its place")
        pos = check_index("position", position, len(record["tokens"]))
        token = check_index("token id", token_id, loaded.vocab_size)
        new_prompt = branch_prompt(loaded, record, pos, token)
        label = display_token(loaded.tokenizer, token)
        old = record["tokens"][pos]["label"]
        where = f"Cut after token #{pos}" if pos else "Cut at the start of the generated text"
        msg = (f"✂ {where} and put {code_label(label)} in place of token #{pos + 1} {code_label(old)}. "
               "The prompt above now ends there: press **Generate** to continue this branch.")
        return new_prompt, msg


STEP_EMPTY = "*No token selected yet.*"
STEP_PROMPT = "Click a generated token to open its step"


def format_step(data: dict, record: dict, attention: AttentionResult | None) -> str:
    """The selected step in words: the drawn token, its probability and surprise, the uncertainty it
    came from, and which token's attention row shows where the model looked."""
    k, d = data["step"], data["drawn"]
    eb, ea = data["entropy_before_bits"], data["entropy_after_bits"]
    kept = (f"rank {d['rank_after']} of the {data['survivors']:,} tokens the settings left" if d["kept"]
            else "**filtered out** by the settings")
    lines = [
        f"**Token #{k + 1}** {code_label(d['token'])} was drawn with probability **{fmt_prob(d['prob'])}** after the "
        f"sampling settings ({kept}); the model alone gave it {fmt_prob(d['raw_prob'])} (rank {d['rank']:,} of "
        f"{data['vocab_size']:,}).",
        f"**Surprisal** {data['surprisal_bits']:.2f} bits · **entropy** of the distribution it came from "
        f"{ea:.2f} bits after the settings, {eb:.2f} bits for the model alone (as uncertain as a fair pick among "
        f"≈ {2 ** ea:,.0f} tokens).",
    ]
    if attention is not None:
        q = steps.step_query(record, k)
        lines.append(f"**Where it looked:** the attention of {code_label(attention.tokens[q])} (token {q}), the last "
                     "token the model had read, in every head of every layer.")
    return "\n\n".join(lines)


class StepHandlers:
    """A generated token's step: its distribution and attention row, computed when it is selected
    (``gpu`` wraps the forward passes on ZeroGPU; the cache stays here)."""

    def __init__(self, manager: ModelManager, cache: ModelCache | None = None, gpu: Callable = lambda fn, **kw: fn):
        self.manager, self.cache = manager, cache
        self._logits = gpu(forward_last_logits)  # (loaded, window ids) -> logits
        self._attention = gpu(compute_attention)  # (loaded, text, exact ids) -> AttentionResult

    @user_errors
    def inspect(self, record, position):
        """(summary, distribution figure, attention figure, attention caption) of the selected token."""
        if position is None or position == "":
            return STEP_EMPTY, empty_figure(STEP_PROMPT), empty_figure(STEP_PROMPT), ""
        loaded = self.manager.require(current_session())
        record, k = steps.check_step(loaded, record, position)
        data = steps.step_distribution(loaded, record, k, STEP_BARS, self.cache, self._logits)
        try:
            result = steps.generation_attention(loaded, record, self.cache, self._attention)
            view = steps.step_view(result, record, k)
        except (AttentionUnavailable, ValidationError) as exc:
            return format_step(data, record, None), bars_figure(data), empty_figure(str(exc)), ""
        return (format_step(data, record, result), bars_figure(data), plots_attention.figure(result, view),
                plots_attention.caption(view, result))


# ----------------------------------------------------------------------------- layout


@dataclass
class GenerateTab:
    """What the page shell connects to the other tabs."""

    prompt: gr.Textbox
    output: gr.Textbox
    controls: dict  # setting name -> input, plus 'preset' and 'max_new_tokens'
    to_attention: gr.Button
    to_next_token: gr.Button
    last_generation: gr.State  # the record of the last generation
    position: gr.Dropdown  # the selected generated token
    step_to_attention: gr.Button  # open the selected token's step in the other tabs
    step_to_next_token: gr.Button


def build(tab: gr.Tab, ctx: AppContext) -> GenerateTab:
    """The Generate tab's contents, built inside ``tab``."""
    gen = GenerateHandlers(ctx.manager, stops=ctx.stops)
    if ctx.settings.zero_gpu:
        gen.run_slice = ctx.gpu(gen.slice, duration=lambda request, state, n: slice_duration(n, state.tokens_per_s))
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=4, value=EXAMPLES[0], max_lines=20,
                                placeholder="Type the beginning of a text…")
            with gr.Row():
                gen_btn = gr.Button("Generate", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
            output = gr.Textbox(label="Generated text", lines=8, max_lines=30, interactive=False,
                                buttons=["copy"], elem_id="output")
            stats = gr.Markdown("", elem_classes="stats")
            with gr.Row():
                to_attention = gr.Button("See its attention →", size="sm")
                to_next = gr.Button("Explore the next token →", size="sm")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Example prompts")
        with gr.Column(scale=2), gr.Accordion("Sampling settings", open=True):
            preset = preset_radio()
            max_new_tokens = setting_input(MAX_NEW_TOKENS)
            controls = sampling_inputs()
    last_generation = gr.State(None)
    on_generation, token_view = _build_token_view(ctx, last_generation, prompt)

    inputs = [prompt, max_new_tokens] + [controls[n] for n in SAMPLING_ORDER]
    generate = with_parameters(gen.generate, API_PARAMETERS)
    # preprocess=False: the handler checks the raw values itself (as the inputs' preprocess would),
    # which saves Gradio's preprocessing a thread hop per input on every request.
    limit = {**ctx.generate_queue, "preprocess": False}
    events = [gen_btn.click(generate, inputs, [output, stats, last_generation], api_name="generate", **limit),
              prompt.submit(generate, inputs, [output, stats, last_generation], **PRIVATE, **limit)]
    for ev in events:
        ev.then(**on_generation)
    # Stop is a request the generation answers itself (a last update that keeps the text, the record for
    # the coloured view): no cancel of the event, whose race with the stream's end showed an error.
    stop_btn.click(gen.stop, None, None, **PRIVATE, **ctx.stop_queue)
    preset.change(preset_values, preset, [controls[n] for n in PRESET_TARGETS], **PRIVATE)
    controls = {**controls, "preset": preset, "max_new_tokens": max_new_tokens}
    return GenerateTab(prompt, output, controls, to_attention, to_next, last_generation, *token_view)


def _build_token_view(ctx: AppContext, last_generation: gr.State, prompt: gr.Textbox
                      ) -> tuple[dict, tuple[gr.Dropdown, gr.Button, gr.Button]]:
    """The probability-coloured output under the generated text, its surprise timeline and the view of
    the selected token's step; returns the event that fills them, and (position, the step's two links)."""
    h = TokenViewHandlers(ctx.manager)
    sh = StepHandlers(ctx.manager, ctx.cache, ctx.gpu)
    with gr.Accordion("How likely was each token? (probability-coloured output)", open=True):
        gr.Markdown(VIEW_HELP)
        view = gr.HTML(token_view_html(None), css_template=TOKEN_VIEW_CSS, js_on_load=TOKEN_VIEW_JS,
                       elem_id="token-view")
        gr.Markdown(TIMELINE_NOTE)
        timeline = gr.Plot(timeline_figure(None), show_label=False, elem_id="surprise-timeline")
        with gr.Row(equal_height=True):
            position = gr.Dropdown(choices=[], value=None, label="Token to change", scale=2)
            alternative = gr.Radio(choices=[], value=None, label="Put this token in its place", scale=3)
        with gr.Row():
            branch_btn = gr.Button("✂ Branch: cut here and put in this token", size="sm")
        branch_md = gr.Markdown("")
        export_btn, files = export_controls(
            "Save these numbers", "**Picture:** the camera icon on the timeline downloads a PNG. **Numbers:** every "
            "generated token with its probability, surprisal and entropy (CSV), and the whole record with the "
            "alternatives, prompt and settings (JSON).")
    with gr.Accordion("This token's step: what it was drawn from, and where the model looked", open=True):
        gr.Markdown(STEP_HELP)
        step_md = gr.Markdown(STEP_EMPTY, elem_id="step-summary")
        with gr.Tabs():
            with gr.Tab("What it was drawn from"):
                step_bars = gr.Plot(empty_figure(STEP_PROMPT), show_label=False, elem_id="step-bars")
            with gr.Tab("Where it looked"):
                step_attention = gr.Plot(empty_figure(STEP_PROMPT), show_label=False, elem_id="step-attention")
                step_caption = gr.Markdown("")
        with gr.Row():
            to_next = gr.Button("Open this step in the Next-token tab →", size="sm")
            to_attention = gr.Button("Open this step in the Attention tab →", size="sm")
    selected = [position, alternative, view, timeline]
    inspect = dict(fn=sh.inspect, inputs=[last_generation, position],
                   outputs=[step_md, step_bars, step_attention, step_caption], show_progress_on=[step_bars],
                   **PRIVATE, **ctx.model_queue)
    view.token_click(h.clicked, [last_generation], selected, **PRIVATE).success(**inspect)
    position.input(h.select, [last_generation, position], selected, **PRIVATE).success(**inspect)
    branch_btn.click(h.branch, [last_generation, position, alternative], [prompt, branch_md], **PRIVATE)

    @user_errors
    def export_generation(record):
        """CSV of the tokens (what the view and the timeline show) and JSON of the whole record."""
        record = check_record(record)
        buf = io.StringIO()
        csv.writer(buf).writerows([TOKEN_COLUMNS, *record_rows(record)])
        return ctx.exports.write("generation", {"csv": buf.getvalue(), "json": json.dumps(record, ensure_ascii=False)})

    export_btn.click(export_generation, [last_generation], files, **PRIVATE)
    return (dict(fn=h.on_generation, inputs=[last_generation],
                 outputs=[view, position, alternative, branch_md, timeline, step_md, step_bars, step_attention,
                          step_caption], **PRIVATE),
            (position, to_attention, to_next))
