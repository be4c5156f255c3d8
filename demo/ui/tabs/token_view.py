"""Under the Generate tab's streamed text: the probability-coloured output (each generated token
coloured by how likely it was when drawn), the surprise timeline, branching from a token, and a
generated token's step (what it was drawn from, where the model looked)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import gradio as gr

from demo.analysis import token_step as steps
from demo.analysis.attention import AttentionUnavailable, compute_attention
from demo.analysis.next_token import forward_last_logits
from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.exports import ExportFolder, csv_text
from demo.core.tokens import display_token
from demo.core.validation import check_index
from demo.plots import attention as plots_attention
from demo.plots.generation import format_step
from demo.plots.next_token import (
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
from demo.runtime.generation import TOKEN_COLUMNS, branch_prompt, check_record, has_tokens, record_rows
from demo.runtime.pool import ModelManager
from demo.ui.common import PRIVATE, AppContext, current_session, event_field, export_controls, user_errors

STEP_BARS = 20  # bars in the view of a step (the drawn token is added when it is not among them)
STEP_EMPTY = "*No token selected yet.*"
STEP_PROMPT = "Click a generated token to open its step"

STEP_HELP = """**Click a token** in the coloured text (or a point of the timeline) to open the moment it was
drawn: the distribution it came from — the model's probabilities and what the sampling settings left, with
the drawn token marked — and where the model looked to produce it."""

VIEW_HELP = """Each generated token is coloured by the probability it had **when it was drawn** (after the
sampling settings). Hover a token (or focus it with Tab) to see the top alternatives. **Branching:** click a
token (or choose it below), pick another token to put in its place, then press *Branch*: the prompt
above is cut there and ends with your token — press **Generate** to continue the new branch."""


class StepView(NamedTuple):
    """A generated token's step, as the page shows it (in the order of the event's outputs)."""

    summary: object
    bars: object
    attention: object
    caption: object


class Selected(NamedTuple):
    """A selected generated token."""

    position: object
    alternative: object
    view: object
    timeline: object


class TokenViewUpdate(NamedTuple):
    """What a new generation's record sets under the streamed text."""

    view: object
    position: object
    alternative: object
    branch_note: object
    timeline: object
    summary: object
    bars: object
    attention: object
    caption: object


# ----------------------------------------------------------------------------- handlers


class TokenViewHandlers:
    """The probability-coloured output: select a generated token, branch from it."""

    def __init__(self, manager: ModelManager, exports: ExportFolder | None = None):
        self.manager, self.exports = manager, exports or ExportFolder()

    @user_errors
    def export(self, record):
        """CSV of the tokens (what the view and the timeline show) and JSON of the whole record."""
        record = check_record(record)
        return self.exports.write("generation", {"csv": csv_text([TOKEN_COLUMNS, *record_rows(record)]),
                                                 "json": json.dumps(record, ensure_ascii=False)})

    @staticmethod
    def _alternatives(record: dict, pos: int) -> list[tuple[str, int]]:
        tok = record["tokens"][pos]
        out = []
        for alt in tok.get("alternatives", []):
            mark = "  (drawn)" if alt["id"] == tok["id"] else ("  (was filtered)" if alt["prob"] <= 0 else "")
            out.append((f"{alt['label']}   {fmt_prob(alt['prob'])}{mark}", int(alt["id"])))
        return out

    def on_generation(self, record) -> TokenViewUpdate:
        """The view, the token list, the timeline of a new generation's record, and its step cleared."""
        cleared = StepView(summary=STEP_EMPTY, bars=empty_figure(STEP_PROMPT), attention=empty_figure(STEP_PROMPT),
                           caption="")
        if not has_tokens(record):
            return TokenViewUpdate(view=token_view_html(None), position=gr.Dropdown(choices=[], value=None),
                                   alternative=gr.Radio(choices=[], value=None), branch_note="",
                                   timeline=timeline_figure(None), **cleared._asdict())
        positions = [(f"#{i + 1}  {t['label']}   {fmt_prob(t['prob'])}", i) for i, t in enumerate(record["tokens"])]
        return TokenViewUpdate(view=token_view_html(record), position=gr.Dropdown(choices=positions, value=None),
                               alternative=gr.Radio(choices=[], value=None), branch_note="",
                               timeline=timeline_figure(record), **cleared._asdict())

    @user_errors
    def select(self, record, position) -> Selected:
        """The selected token: its position, its alternatives, the view with it outlined, the timeline with
        it marked."""
        record = check_record(record)
        pos = check_index("position", position, len(record["tokens"]))
        alts = self._alternatives(record, pos)
        drawn = record["tokens"][pos]["id"]
        first_other = next((i for _, i in alts if i != drawn), None)
        return Selected(position=pos, alternative=gr.Radio(choices=alts, value=first_other),
                        view=token_view_html(record, selected=pos), timeline=timeline_figure(record, pos))

    def clicked(self, record, evt: gr.EventData):
        return self.select(record, event_field(evt, "pos"))

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




class StepHandlers:
    """A generated token's step: its distribution and attention row, computed when it is selected
    (``gpu`` wraps the forward passes on ZeroGPU; the cache stays here)."""

    def __init__(self, manager: ModelManager, cache: ModelCache | None = None, gpu: Callable = lambda fn, **kw: fn):
        self.manager, self.cache = manager, cache
        self._logits = gpu(forward_last_logits)  # (loaded, window ids) -> logits
        self._attention = gpu(compute_attention)  # (loaded, text, exact ids) -> AttentionResult

    @user_errors
    def inspect(self, record, position) -> StepView:
        """The selected token's step: its summary, what it was drawn from, where it looked."""
        if position is None or position == "":
            return StepView(STEP_EMPTY, empty_figure(STEP_PROMPT), empty_figure(STEP_PROMPT), "")
        loaded = self.manager.require(current_session())
        record, k = steps.check_step(loaded, record, position)
        data = steps.step_distribution(loaded, record, k, STEP_BARS, self.cache, self._logits)
        try:
            result = steps.generation_attention(loaded, record, self.cache, self._attention)
            view = steps.step_view(result, record, k)
        except (AttentionUnavailable, ValidationError) as exc:
            return StepView(format_step(data, record, None), bars_figure(data), empty_figure(str(exc)), "")
        return StepView(format_step(data, record, result), bars_figure(data), plots_attention.figure(result, view),
                        plots_attention.caption(view, result))


# ----------------------------------------------------------------------------- layout and wiring


class TokenViewLayout(NamedTuple):
    view: gr.HTML
    timeline: gr.Plot
    position: gr.Dropdown  # the selected generated token
    alternative: gr.Radio
    branch: gr.Button
    branch_note: gr.Markdown
    export: gr.Button
    files: gr.File
    summary: gr.Markdown
    bars: gr.Plot
    attention: gr.Plot
    caption: gr.Markdown
    to_next_token: gr.Button  # open the selected token's step in the other tabs
    to_attention: gr.Button

    def outputs(self, fields: Any) -> list:
        """The components named by a NamedTuple's fields, in its order."""
        return [getattr(self, f) for f in fields._fields]


def layout() -> TokenViewLayout:
    """The probability-coloured output under the generated text, its surprise timeline and the view of
    the selected token's step."""
    with gr.Accordion("How likely was each token? (probability-coloured output)", open=True):
        gr.Markdown(VIEW_HELP, elem_classes="tab-intro")
        view = gr.HTML(token_view_html(None), css_template=TOKEN_VIEW_CSS, js_on_load=TOKEN_VIEW_JS,
                       elem_id="token-view")
        gr.Markdown(TIMELINE_NOTE, elem_classes="tab-intro")
        timeline = gr.Plot(timeline_figure(None), show_label=False, elem_id="surprise-timeline")
        with gr.Row(equal_height=True):
            position = gr.Dropdown(choices=[], value=None, label="Token to change", scale=2)
            alternative = gr.Radio(choices=[], value=None, label="Put this token in its place", scale=3)
        with gr.Row():
            branch = gr.Button("✂ Branch: cut here and put in this token", size="sm")
        branch_note = gr.Markdown("")
        export, files = export_controls(
            "Save these numbers", "**Picture:** the camera icon on the timeline downloads a PNG. **Numbers:** every "
            "generated token with its probability, surprisal and entropy (CSV), and the whole record with the "
            "alternatives, prompt and settings (JSON).")
    with gr.Accordion("This token's step: what it was drawn from, and where the model looked", open=True):
        gr.Markdown(STEP_HELP)
        summary = gr.Markdown(STEP_EMPTY, elem_id="step-summary")
        with gr.Tabs():
            with gr.Tab("What it was drawn from"):
                bars = gr.Plot(empty_figure(STEP_PROMPT), show_label=False, elem_id="step-bars")
            with gr.Tab("Where it looked"):
                attention = gr.Plot(empty_figure(STEP_PROMPT), show_label=False, elem_id="step-attention")
                caption = gr.Markdown("")
        with gr.Row():
            to_next_token = gr.Button("Open this step in the Next-token tab →", size="sm")
            to_attention = gr.Button("Open this step in the Attention tab →", size="sm")
    return TokenViewLayout(view, timeline, position, alternative, branch, branch_note, export, files, summary, bars,
                           attention, caption, to_next_token, to_attention)


def wire(ui: TokenViewLayout, ctx: AppContext, last_generation: gr.State, prompt: gr.Textbox) -> dict:
    """Connect the view's events; returns the event that fills it from a new generation's record."""
    h = TokenViewHandlers(ctx.manager, ctx.exports)
    sh = StepHandlers(ctx.manager, ctx.cache, ctx.gpu)
    inspect = dict(fn=sh.inspect, inputs=[last_generation, ui.position], outputs=ui.outputs(StepView),
                   show_progress_on=[ui.bars], **PRIVATE, **ctx.model_queue)
    ui.view.token_click(h.clicked, [last_generation], ui.outputs(Selected), **PRIVATE).success(**inspect)
    ui.position.input(h.select, [last_generation, ui.position], ui.outputs(Selected), **PRIVATE).success(**inspect)
    ui.branch.click(h.branch, [last_generation, ui.position, ui.alternative], [prompt, ui.branch_note], **PRIVATE)
    ui.export.click(h.export, [last_generation], ui.files, **PRIVATE)
    return dict(fn=h.on_generation, inputs=[last_generation], outputs=ui.outputs(TokenViewUpdate), **PRIVATE)
