"""The Attention tab: a text, a view (one head, all heads of a layer, average/max, one token), the
plotly heatmap with a plain-language note beside it, a clickable token strip, exports, and the public
``/attention`` API endpoint.

Handlers validate the text, fetch the (cached) attention from :mod:`demo.attention`, parse the view
once (:meth:`AttentionView.parse`) and format with :mod:`demo.plots_attention`: switching layer, head
or view reuses the cached forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import gradio as gr

from .. import plots_attention as P
from .. import steps
from ..attention import (
    AGGREGATES,
    SCOPES,
    VIEWS,
    AttentionResult,
    AttentionView,
    api_payload,
    attention_of,
    compute_attention,
    looking_row,
    view_matrix,
)
from ..attention import export_tables as attention_tables
from ..backend import ModelManager
from ..cache import ModelCache
from ..errors import ValidationError
from ..exports import ExportFolder
from ..validation import check_text
from .common import PRIVATE, AppContext, current_session, export_controls, unchanged, user_errors

DEFAULT_TEXT = ("It was a dark and stormy night, and the old captain sat by the fire. "
                "It was a dark and stormy night, and the old captain")
EXAMPLES = [
    DEFAULT_TEXT,
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "The cat sat on the mat. The dog sat on the rug. The cat sat on the",
    "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal.",
]
INTRO = (
    "See what each **attention head** looks at. Inside every layer of a GPT, each head lets every token "
    "*look back* at the tokens before it and decide how much each one matters. Type a text (or use "
    "**See its attention →** on the Generate tab), press **Show attention**, then pick a view, a layer and a head.")
EXPORT_MAX_NUMBERS = 4_000_000  # one export file holds at most this many weights

VIEW_CHOICES = [(label, key) for key, label in VIEWS.items()]
AGG_CHOICES = [(label, key) for key, label in AGGREGATES.items()]
SCOPE_CHOICES = [(label, key) for key, label in SCOPES.items()]


class Shown(NamedTuple):
    """What a view puts on the page (the outputs of a switch, in this order)."""

    plot: object
    note: str
    notice: str
    strip: object


class Analysed(NamedTuple):
    """The outputs of analysing a text: the view, and the controls reset to fit the result."""

    plot: object
    note: str
    notice: str
    strip: object
    layer: object
    head: object
    token: object
    analysed: str


class OpenedStep(NamedTuple):
    """The outputs of opening a generated token's step: the text, the view, its controls, what it shows."""

    text: str
    view: str
    layer: object
    head: object
    aggregate: object
    token: object
    scope: object
    open_head: object
    plot: object
    note: str
    notice: str
    strip: object
    analysed: str


# ----------------------------------------------------------------------------- formatting (pure)


def notice_text(result: AttentionResult, view: AttentionView, cached: bool | None = None) -> str:
    parts = [f"**{result.n_tokens} tokens** · {result.n_layers} layers × {result.n_heads} heads · "
             f"model {result.model_name} ({result.precision})"]
    if cached is not None:
        parts[0] += f" · {'from the cache' if cached else f'computed in {result.seconds:.2f} s'}"
    if result.truncated:
        parts.append(f"⚠️ {result.notice()}")
    pooled = P.pooling_notice(result, view)
    if pooled:
        parts.append(pooled)
    return "\n\n".join(parts)


def strip_value(result: AttentionResult, view: AttentionView) -> list[tuple[str, float | None]]:
    """The tokens as a clickable strip, shaded by where the view's token looks."""
    q = view.token
    row = looking_row(result, view)
    top = float(row.max()) or 1.0
    out: list[tuple[str, float | None]] = [(t, round(float(v) / top, 3)) for t, v in zip(result.tokens, row)]
    out += [(t, None) for t in result.tokens[q + 1:]]
    return out


def strip_label(result: AttentionResult, view: AttentionView) -> str:
    q = view.token
    what = view.describe() if view.kind in ("head", "aggregate") else (
        f"average of the heads of layer {view.layer}" if view.kind == "heads" or view.scope == "layer"
        else "average of every head")
    return (f"Where “{result.tokens[q]}” (token {q}) looks — {what}; darker = more attention. "
            "Click any token to see where it looks.")


def render(result: AttentionResult, view: AttentionView, cached: bool | None = None) -> Shown:
    strip = gr.HighlightedText(value=strip_value(result, view), label=strip_label(result, view))
    return Shown(P.figure(result, view), P.caption(view, result), notice_text(result, view, cached), strip)


def token_choices(result: AttentionResult) -> list[tuple[str, int]]:
    return [(f"{i}: {t}", i) for i, t in enumerate(result.tokens)]


def _clamp(value, hi: int, default: int = 0) -> int:
    """Slider values coming from the page for a model that may have changed: clamp instead of failing."""
    try:
        v = int(round(float(value)))
    except (TypeError, ValueError, OverflowError):
        return default
    return min(max(v, 0), hi)


# ----------------------------------------------------------------------------- handlers


class AttentionHandlers:
    """The tab's server functions. ``gpu`` wraps the forward pass (ZeroGPU), identity elsewhere."""

    def __init__(self, manager: ModelManager, cache: ModelCache, gpu: Callable = lambda fn, **kw: fn,
                 exports: ExportFolder | None = None):
        self.manager, self.cache = manager, cache
        self.exports = exports or ExportFolder()
        # The forward pass, where the model runs (a ZeroGPU worker on such hardware; else here): text
        # in, plain arrays out; the cache stays in this process.
        self._compute = gpu(self._attention)

    @staticmethod
    def _attention(loaded, text: str, ids: list[int] | None = None) -> AttentionResult:
        return compute_attention(loaded, text, ids)

    def fetch(self, text) -> tuple[AttentionResult, bool]:
        """(the attention of `text` under the visitor's model, whether the cache held it)."""
        text = check_text("text", text)
        loaded = self.manager.require(current_session())
        hit = self.cache.peek("attention", loaded, text)
        if hit is not None:
            return hit, True
        return attention_of(loaded, text, self.cache, self._compute), False

    @user_errors
    def analyse(self, text, analysed, view, layer, head, aggregate, token, scope) -> Analysed:
        """Run (or reuse) the forward pass for `text` and show the chosen view; resets what no longer fits
        (a new text starts on its last token; another model may have fewer layers or heads)."""
        result, hit = self.fetch(text)
        same_text = isinstance(analysed, str) and analysed == result.text
        v = AttentionView.parse(
            result, view, _clamp(layer, result.n_layers - 1), _clamp(head, result.n_heads - 1), aggregate,
            _clamp(token, result.n_tokens - 1) if same_text and token is not None else None, scope)
        shown = render(result, v, cached=hit)
        return Analysed(*shown,
                        gr.Slider(maximum=max(1, result.n_layers - 1), value=v.layer, interactive=result.n_layers > 1),
                        gr.Slider(maximum=max(1, result.n_heads - 1), value=v.head, interactive=result.n_heads > 1),
                        gr.Dropdown(choices=token_choices(result), value=v.token),
                        result.text)

    @user_errors
    def switch(self, analysed, text, view, layer, head, aggregate, token, scope) -> Shown:
        """Another layer / head / view of the analysed text (cached: no forward pass)."""
        source = analysed or text
        fresh = self.cache.peek("attention", self.manager.require(current_session()), source) is None
        result, _ = self.fetch(source)
        try:
            v = AttentionView.parse(result, view, layer, head, aggregate, token, scope)
        except ValidationError as exc:
            if fresh:  # another model was loaded since the controls were set
                raise ValidationError(f"{exc}. The model changed: press Show attention to analyse the "
                                      "text again.") from exc
            raise
        return render(result, v)

    @user_errors
    def export(self, analysed, text, view, layer, head, aggregate, token, scope) -> list[str]:
        """CSV + JSON of the matrix the view shows (exact values, not the blocks of a long text)."""
        result, _ = self.fetch(analysed or text)
        v = AttentionView.parse(result, view, layer, head, aggregate, token, scope)
        stem, csv_text, data = attention_tables(result, v, EXPORT_MAX_NUMBERS)
        return self.exports.write(stem, {"csv": csv_text, "json": json.dumps(data, ensure_ascii=False)})

    @user_errors
    def open_step(self, record, position) -> OpenedStep:
        """A generated token's step (see :mod:`demo.steps`): the whole generation, in the 'One token' view of
        the token the model read last before drawing it (the forward pass the Generate tab cached)."""
        loaded = self.manager.require(current_session())
        record, k = steps.check_step(loaded, record, position)
        hit = self.cache.peek("attention", loaded, steps.generation_text(loaded, record)) is not None
        result = steps.generation_attention(loaded, record, self.cache, self._compute)
        v = steps.step_view(result, record, k)
        return OpenedStep(result.text, "token",
                          gr.Slider(maximum=max(1, result.n_layers - 1), value=v.layer, visible=True),
                          gr.Slider(maximum=max(1, result.n_heads - 1), value=v.head, visible=False),
                          gr.Dropdown(visible=False),
                          gr.Dropdown(choices=token_choices(result), value=v.token, visible=True),
                          gr.Radio(value=v.scope, visible=True), gr.Button(visible=False),
                          *render(result, v, cached=hit), result.text)

    @user_errors
    def api_attention(self, text, layer, head, view, aggregate, token, scope):
        """The attention of `text`: the figure of the chosen view, and JSON with the tokens and the
        [T, T] weight matrix of `layer`/`head` (rows = query, columns = key; each row sums to 1).

        view: head | heads | aggregate | token. aggregate: mean-heads | max-heads | mean-layers | max-layers |
        mean-all | max-all. token: query position for view 'token' (-1 = last). scope: layer | all."""
        result, _ = self.fetch(text)
        v = AttentionView.parse(result, view, layer, head, aggregate, token, scope)
        vm = view_matrix(result, v)
        return P.figure(result, v, vm), api_payload(result, v, vm)


def view_controls(view):
    """Which controls each view uses (layer, head, aggregate, token, scope, open button)."""
    view = view if view in VIEWS else "head"
    return (gr.Slider(visible=True),
            gr.Slider(visible=view in ("head", "heads", "aggregate"),
                      label="Head to open" if view == "heads" else "Head"),
            gr.Dropdown(visible=view == "aggregate"),
            gr.Dropdown(visible=view in ("token",)),
            gr.Radio(visible=view == "token"),
            gr.Button(visible=view == "heads"))


# ----------------------------------------------------------------------------- layout


class AttentionTab(NamedTuple):
    text: gr.Textbox
    on_text: dict  # the event that analyses the text box (for the Generate tab's link)
    open_step: Callable[[list], dict]  # inputs (record, position) -> the event that opens a generated token's step
    controls: dict  # view, layer, head, aggregate, token, scope
    restore: Callable[[gr.State], dict]  # a link's state -> the event that draws the view it names


def build(tab: gr.Tab, ctx: AppContext) -> AttentionTab:
    """The Attention tab's contents, built inside ``tab`` (whose first opening draws the default text)."""
    cur = ctx.manager.current
    n_layers = cur.model.config.num_hidden_layers if cur is not None else 12
    n_heads = cur.model.config.num_attention_heads if cur is not None else 12
    h = AttentionHandlers(ctx.manager, ctx.cache, ctx.gpu, ctx.exports)

    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        text = gr.Textbox(label="Text to analyse", value=DEFAULT_TEXT, lines=3, max_lines=12, scale=5,
                          placeholder="Type or paste a sentence…", elem_id="attention-text")
        show_btn = gr.Button("Show attention", variant="primary", scale=1, min_width=140)
    gr.Examples(EXAMPLES, inputs=[text], label="Examples (the first and third repeat themselves: look for "
                                               "induction-like stripes)")
    view = gr.Radio(VIEW_CHOICES, value="head", label="View", elem_id="attention-view")
    with gr.Row(equal_height=True):
        layer = gr.Slider(0, max(1, n_layers - 1), value=0, step=1, label="Layer (0 = first)",
                          elem_id="attention-layer")
        head = gr.Slider(0, max(1, n_heads - 1), value=0, step=1, label="Head", elem_id="attention-head")
        aggregate = gr.Dropdown(AGG_CHOICES, value="mean-heads", label="Combine", visible=False)
        token = gr.Dropdown([], value=None, label="Token doing the looking", visible=False,
                            elem_id="attention-token")
        scope = gr.Radio(SCOPE_CHOICES, value="layer", label="Show", visible=False)
        open_btn = gr.Button("Open this head", visible=False, size="sm")
    notice = gr.Markdown("Press **Show attention**.", elem_id="attention-notice")
    with gr.Row():
        with gr.Column(scale=3, min_width=480):
            plot = gr.Plot(show_label=False, elem_id="attention-plot")
        with gr.Column(scale=1, min_width=240):
            note = gr.Markdown(P.caption(AttentionView()), elem_id="attention-note")
    strip = gr.HighlightedText(label="The text as tokens — click a token to see where it looks",
                               show_legend=False, combine_adjacent=False, interactive=False,
                               elem_id="attention-strip")
    export_btn, files = export_controls(
        "Save this view", "**Picture:** hover the plot and click the camera icon (top right of the plot) to download "
        "it as a PNG.  \n**Numbers:** the button writes the exact weights of this view (token by token, even when "
        "the picture groups tokens in blocks) as CSV and JSON.")
    analysed = gr.State(None)  # the text the controls refer to

    # The /attention endpoint: API only (its own components, so the page never receives the big JSON).
    with gr.Group(visible=False):
        api_text = gr.Textbox(label="text")
        api_layer = gr.Number(value=0, label="layer")
        api_head = gr.Number(value=0, label="head")
        api_view = gr.Textbox(value="head", label="view")
        api_aggregate = gr.Textbox(value="mean-heads", label="aggregate")
        api_token = gr.Number(value=-1, label="token")
        api_scope = gr.Textbox(value="layer", label="scope")
        api_plot = gr.Plot(label="figure")
        api_data = gr.JSON(label="data")
        api_btn = gr.Button("attention")
    api_btn.click(h.api_attention, [api_text, api_layer, api_head, api_view, api_aggregate, api_token, api_scope],
                  [api_plot, api_data], api_name="attention", **ctx.model_queue)

    settings = [view, layer, head, aggregate, token, scope]
    shown = dict(zip(Shown._fields, [plot, note, notice, strip]))
    analysed_out = [{**shown, "layer": layer, "head": head, "token": token, "analysed": analysed}[f]
                    for f in Analysed._fields]
    analyse_event = dict(fn=h.analyse, inputs=[text, analysed, *settings], outputs=analysed_out,
                         show_progress_on=[plot], **PRIVATE, **ctx.model_queue)
    show_btn.click(**analyse_event)
    text.submit(**analyse_event)
    switch = dict(fn=h.switch, inputs=[analysed, text, *settings], outputs=[shown[f] for f in Shown._fields],
                  show_progress="minimal", show_progress_on=[plot], **PRIVATE, **ctx.model_queue)
    controls_for_view = dict(fn=view_controls, inputs=view, outputs=[layer, head, aggregate, token, scope, open_btn],
                             queue=False, **PRIVATE)
    view.input(**controls_for_view).then(**switch)
    for c in (layer, head):
        c.release(**switch)
    for c in (aggregate, token, scope):
        c.input(**switch)
    open_btn.click(lambda: "head", None, view, queue=False, **PRIVATE).then(**controls_for_view).then(**switch)

    def pick_token(evt: gr.SelectData):
        """A click on a token of the strip: that token, in the One token view."""
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return (index if isinstance(index, int) else gr.skip()), "token"

    strip.select(pick_token, None, [token, view], queue=False, **PRIVATE).then(**controls_for_view).then(**switch)
    export_btn.click(h.export, [analysed, text, *settings], files, **PRIVATE, **ctx.model_queue)

    def first_visit(text_, done, *args):
        """First opening of the tab: show the default text without a click."""
        if done is not None:
            return unchanged(Analysed)
        try:
            return h.analyse(text_, done, *args)
        except gr.Error:
            return unchanged(Analysed)

    tab.select(first_visit, [text, analysed, *settings], analysed_out, show_progress_on=[plot], **PRIVATE,
               **ctx.model_queue)
    def open_step(inputs: list) -> dict:
        """The event that opens a generated token's step, its inputs the record and the position."""
        outputs = [text, view, layer, head, aggregate, token, scope, open_btn, *shown.values(), analysed]
        return dict(fn=h.open_step, inputs=inputs, outputs=outputs, show_progress_on=[plot], **PRIVATE,
                    **ctx.model_queue)

    def restore(restored: gr.State) -> dict:
        """The event that draws what a link names (a dict from :func:`demo.ui.share.restore`), if it names
        this tab: its text, in its view, layer, head and token."""
        def draw(link):
            if not isinstance(link, dict) or link.get("tab") != "attention" or not link.get("text"):
                return unchanged(Analysed)
            a = link.get("attention") or {}
            try:
                return h.analyse(link["text"], link["text"], a.get("view", "head"), a.get("layer", 0), a.get("head", 0),
                                 a.get("aggregate", "mean-heads"), a.get("token"), a.get("scope", "layer"))
            except gr.Error:
                return unchanged(Analysed)

        return dict(fn=draw, inputs=[restored], outputs=analysed_out, show_progress_on=[plot], **PRIVATE,
                    **ctx.model_queue)

    return AttentionTab(text, analyse_event, open_step, dict(zip(("view", "layer", "head", "aggregate", "token",
                                                                  "scope", "open_head"), [*settings, open_btn])),
                        restore)
