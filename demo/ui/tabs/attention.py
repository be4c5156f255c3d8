"""The Attention tab: a text, a view (one head, all heads of a layer, average/max, one token), the
plotly heatmap with a plain-language note beside it, a clickable token strip, exports, and the public
``/attention`` API endpoint.

Handlers validate the text, fetch the (cached) attention from :mod:`demo.analysis.attention`, parse the view
once (:meth:`AttentionView.parse`) and format with :mod:`demo.plots.attention`: switching layer, head
or view reuses the cached forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import gradio as gr

from demo.analysis import token_step as steps
from demo.analysis.attention import (
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
from demo.analysis.attention import export_tables as attention_tables
from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.exports import ExportFolder
from demo.core.validation import check_choice, check_text
from demo.plots import attention as P
from demo.runtime.loading import LoadedModel
from demo.runtime.pool import ModelManager
from demo.ui.common import PRIVATE, AppContext, current_session, event_field, export_controls, unchanged, user_errors
from demo.ui.inputs import NumberSlider, examples

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
    layer: Any  # a component in the layout, an update in a handler's result
    head: Any
    aggregate: Any
    token: Any
    scope: Any
    open_head: Any
    plot: object
    note: str
    notice: str
    strip: object
    analysed: str


# ----------------------------------------------------------------------------- formatting (pure)


def notice_text(result: AttentionResult, view: AttentionView, timed: bool = False) -> str:
    """The line above the figure. ``timed``: with the time of the forward pass behind it (the same whether
    this visitor's request ran it or it was in the cache, which other visitors share: whether a text was
    cached would tell a visitor which texts others analysed)."""
    parts = [f"**{result.n_tokens} tokens** · {result.n_layers} layers × {result.n_heads} heads · "
             f"model {result.model_name} ({result.precision})"]
    if timed:
        parts[0] += f" · computed in {result.seconds:.2f} s"
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


def render(result: AttentionResult, view: AttentionView, timed: bool = False) -> Shown:
    strip = gr.HighlightedText(value=cast(Any, strip_value(result, view)), label=strip_label(result, view))
    return Shown(P.figure(result, view), P.caption(view, result), notice_text(result, view, timed), strip)


def token_choices(result: AttentionResult) -> list[tuple[str, int]]:
    return [(f"{i}: {t}", i) for i, t in enumerate(result.tokens)]


def _clamp(value, hi: int, default: int = 0) -> int:
    """Slider values coming from the page for a model that may have changed: clamp instead of failing."""
    try:
        v = int(round(float(value)))
    except (TypeError, ValueError, OverflowError):
        return default
    return min(max(v, 0), hi)


def page_view(result: AttentionResult, view, layer, head, aggregate, token, scope) -> AttentionView:
    """The view the page's controls ask for. The token choice counts only in the one-token view: a page
    may still send the previous text's token while the new text's choices reach it (a quick click after
    Show attention), and that value must not fail a view that does not use it."""
    kind = check_choice("view", view, VIEWS, default="head")
    return AttentionView.parse(result, kind, layer, head, aggregate, token if kind == "token" else None, scope)


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
    def _attention(loaded: LoadedModel, text: str, ids: list[int] | None = None) -> AttentionResult:
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
        result, _ = self.fetch(text)
        same_text = isinstance(analysed, str) and analysed == result.text
        v = AttentionView.parse(
            result, view, _clamp(layer, result.n_layers - 1), _clamp(head, result.n_heads - 1), aggregate,
            _clamp(token, result.n_tokens - 1) if same_text and token is not None else None, scope)
        shown = render(result, v, timed=True)
        return Analysed(*shown,
                        gr.Slider(maximum=max(1, result.n_layers - 1), value=v.layer, interactive=result.n_layers > 1),
                        gr.Slider(maximum=max(1, result.n_heads - 1), value=v.head, interactive=result.n_heads > 1),
                        gr.Dropdown(choices=token_choices(result), value=v.token),
                        result.text)

    @user_errors
    def switch(self, analysed, text, view, layer, head, aggregate, token, scope) -> Shown:
        """Another layer / head / view of the analysed text (cached: no forward pass)."""
        source = analysed or text
        # only this session's own analysed text can tell it the model changed: whether another text is in
        # the shared cache is nobody's business
        fresh = bool(analysed) and self.cache.peek("attention", self.manager.require(current_session()), source) is None
        result, _ = self.fetch(source)
        try:
            v = page_view(result, view, layer, head, aggregate, token, scope)
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
        v = page_view(result, view, layer, head, aggregate, token, scope)
        stem, csv_text, data = attention_tables(result, v, EXPORT_MAX_NUMBERS)
        return self.exports.write(stem, {"csv": csv_text, "json": json.dumps(data, ensure_ascii=False)})

    @user_errors
    def open_step(self, record, position) -> OpenedStep:
        """A generated token's step (see :mod:`demo.analysis.token_step`): the whole generation, in the
        'One token' view of the token the model read last before drawing it (the forward pass the Generate
        tab cached)."""
        loaded = self.manager.require(current_session())
        record, k = steps.check_step(loaded, record, position)
        result = steps.generation_attention(loaded, record, self.cache, self._compute)
        v = steps.step_view(result, record, k)
        return OpenedStep(result.text, "token",
                          gr.Slider(maximum=max(1, result.n_layers - 1), value=v.layer, visible=True),
                          gr.Slider(maximum=max(1, result.n_heads - 1), value=v.head, visible=False),
                          gr.Dropdown(visible=False),
                          gr.Dropdown(choices=token_choices(result), value=v.token, visible=True),
                          gr.Radio(value=v.scope, visible=True), gr.Button(visible=False),
                          *render(result, v, timed=True), result.text)

    def first_visit(self, text, done, *settings) -> Analysed:
        """First opening of the tab: show the default text without a click (later visits keep the view)."""
        if done is not None:
            return unchanged(Analysed)
        try:
            return self.analyse(text, done, *settings)
        except gr.Error:
            return unchanged(Analysed)

    def restore(self, link) -> Analysed:
        """What a link names (see :mod:`demo.ui.share`), if it names this tab: its text, in its view,
        layer, head and token; otherwise nothing changes."""
        if not isinstance(link, dict) or link.get("tab") != "attention" or not link.get("text"):
            return unchanged(Analysed)
        a = link.get("attention") or {}
        try:
            return self.analyse(link["text"], link["text"], a.get("view", "head"), a.get("layer", 0),
                                a.get("head", 0), a.get("aggregate", "mean-heads"), a.get("token"),
                                a.get("scope", "layer"))
        except gr.Error:
            return unchanged(Analysed)

    @staticmethod
    def pick_token(evt: gr.EventData):
        """A click on a token of the strip: that token, in the One token view (a click without a token's
        index, which only a client of its own sends, changes nothing)."""
        index = event_field(evt, "index")
        index = index[0] if isinstance(index, (list, tuple)) and index else index
        if not isinstance(index, int) or isinstance(index, bool):
            return gr.skip(), gr.skip()
        return index, "token"

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


class ViewControls(NamedTuple):
    """The controls that depend on the view (in the order of the event's outputs)."""

    layer: Any  # a component in the layout, an update in a handler's result
    head: Any
    aggregate: Any
    token: Any
    scope: Any
    open_head: Any


def view_controls(view) -> ViewControls:
    """Which controls each view uses."""
    view = view if view in VIEWS else "head"
    return ViewControls(layer=gr.Slider(visible=True),
                        head=gr.Slider(visible=view in ("head", "heads", "aggregate"),
                                       label="Head to open" if view == "heads" else "Head"),
                        aggregate=gr.Dropdown(visible=view == "aggregate"),
                        token=gr.Dropdown(visible=view in ("token",)),
                        scope=gr.Radio(visible=view == "token"),
                        open_head=gr.Button(visible=view == "heads"))


# ----------------------------------------------------------------------------- layout


class AttentionLayout(NamedTuple):
    text: gr.Textbox
    show: gr.Button
    view: gr.Radio
    controls: ViewControls  # the controls that depend on the view
    notice: gr.Markdown
    plot: gr.Plot
    note: gr.Markdown
    strip: gr.HighlightedText
    export: gr.Button
    files: gr.File
    analysed: gr.State  # the text the controls refer to

    @property
    def settings(self) -> list:
        """The view's settings, in the order the handlers take them."""
        c = self.controls
        return [self.view, c.layer, c.head, c.aggregate, c.token, c.scope]

    def outputs(self, fields: Any) -> list:
        """The components named by a NamedTuple's fields (Shown, Analysed, OpenedStep), in its order."""
        named = {"text": self.text, "view": self.view, "plot": self.plot, "note": self.note, "notice": self.notice,
                 "strip": self.strip, "analysed": self.analysed, **self.controls._asdict()}
        return [named[f] for f in fields._fields]


def layout(n_layers: int, n_heads: int) -> AttentionLayout:
    gr.Markdown(INTRO, elem_classes="tab-intro")
    # the controls above the figure; beside it in projector mode (demo.ui.page.PROJECTOR_CSS)
    with gr.Row(elem_classes="stack-unless-projector"):
        with gr.Column(elem_classes="controls-col"):
            with gr.Row(equal_height=True):
                text = gr.Textbox(label="Text to analyse", value=DEFAULT_TEXT, lines=3, max_lines=12, scale=5,
                                  placeholder="Type or paste a sentence…", elem_id="attention-text")
                show = gr.Button("Show attention", variant="primary", scale=1, min_width=140)
            examples(EXAMPLES, inputs=[text], label="Examples (the first and third repeat themselves: look for "
                                                    "induction-like stripes)", elem_id="attention-examples")
            view = gr.Radio(VIEW_CHOICES, value="head", label="View", elem_id="attention-view")
            with gr.Row(equal_height=True):
                layer = NumberSlider(0, max(1, n_layers - 1), value=0, step=1, label="Layer (0 = first)",
                                     elem_id="attention-layer")
                head = NumberSlider(0, max(1, n_heads - 1), value=0, step=1, label="Head", elem_id="attention-head")
                aggregate = gr.Dropdown(AGG_CHOICES, value="mean-heads", label="Combine", visible=False)
                # the server checks the token itself (page_view): a value from the previous text's choices,
                # sent before the new choices arrive, must not be refused by Gradio before the handler sees it
                token = gr.Dropdown([], value=None, label="Token doing the looking", visible=False,
                                    elem_id="attention-token", allow_custom_value=True)
                scope = gr.Radio(SCOPE_CHOICES, value="layer", label="Show", visible=False)
                open_head = gr.Button("Open this head", visible=False, size="sm")
            notice = gr.Markdown("Press **Show attention**.", elem_id="attention-notice")
        with gr.Column(elem_classes="figure-col"), gr.Row(elem_classes="figure-row"):
            with gr.Column(scale=3, min_width=480):
                plot = gr.Plot(show_label=False, elem_id="attention-plot")
            with gr.Column(scale=1, min_width=240, elem_classes="note-col"):
                note = gr.Markdown(P.caption(AttentionView()), elem_id="attention-note")
    strip = gr.HighlightedText(label="The text as tokens — click a token to see where it looks",
                               show_legend=False, combine_adjacent=False, interactive=False,
                               elem_id="attention-strip")
    export, files = export_controls(
        "Save this view", "**Picture:** hover the plot and click the camera icon (top right of the plot) to download "
        "it as a PNG.  \n**Numbers:** the button writes the exact weights of this view (token by token, even when "
        "the picture groups tokens in blocks) as CSV and JSON.")
    return AttentionLayout(text, show, view, ViewControls(layer, head, aggregate, token, scope, open_head), notice,
                           plot, note, strip, export, files, gr.State(None))


def api_endpoint(h: AttentionHandlers, ctx: AppContext) -> None:
    """The /attention endpoint: API only (its own hidden components, so the page never receives the big
    JSON)."""
    with gr.Group(visible=False):
        inputs = [gr.Textbox(label="text"), gr.Number(value=0, label="layer"), gr.Number(value=0, label="head"),
                  gr.Textbox(value="head", label="view"), gr.Textbox(value="mean-heads", label="aggregate"),
                  gr.Number(value=-1, label="token"), gr.Textbox(value="layer", label="scope")]
        outputs = [gr.Plot(label="figure"), gr.JSON(label="data")]
        button = gr.Button("attention")
    button.click(h.api_attention, inputs, outputs, api_name="attention", **ctx.model_queue)


class AttentionTab(NamedTuple):
    text: gr.Textbox
    on_text: dict  # the event that analyses the text box (for the Generate tab's link)
    open_step: Callable[[list], dict]  # inputs (record, position) -> the event that opens a generated token's step
    controls: dict  # view, layer, head, aggregate, token, scope, open_head
    restore: Callable[[gr.State], dict]  # a link's state -> the event that draws the view it names


def wire(tab: gr.Tab, ui: AttentionLayout, h: AttentionHandlers, ctx: AppContext) -> AttentionTab:
    common = dict(**PRIVATE, **ctx.model_queue)
    on_plot = dict(show_progress_on=[ui.plot], **common)
    analyse = dict(fn=h.analyse, inputs=[ui.text, ui.analysed, *ui.settings], outputs=ui.outputs(Analysed), **on_plot)
    ui.show.click(**analyse)
    ui.text.submit(**analyse)
    switch = dict(fn=h.switch, inputs=[ui.analysed, ui.text, *ui.settings], outputs=ui.outputs(Shown),
                  show_progress="minimal", **on_plot)
    for_view = dict(fn=view_controls, inputs=ui.view, outputs=list(ui.controls), queue=False, **PRIVATE)
    c = ui.controls
    ui.view.input(**for_view).then(**switch)
    for slider in (c.layer, c.head):
        # every change a visitor makes: a drag (only its latest value is drawn), the arrow keys, typing a
        # number (each keystroke; Gradio's "release" comes only on pointer-up or when the box loses focus)
        slider.input(**switch, trigger_mode="always_last")
    for choice in (c.aggregate, c.token, c.scope):
        choice.input(**switch)
    c.open_head.click(lambda: "head", None, ui.view, queue=False, **PRIVATE).then(**for_view).then(**switch)
    ui.strip.select(h.pick_token, None, [c.token, ui.view], queue=False, **PRIVATE).then(**for_view).then(**switch)
    ui.export.click(h.export, [ui.analysed, ui.text, *ui.settings], ui.files, **common)
    tab.select(h.first_visit, [ui.text, ui.analysed, *ui.settings], ui.outputs(Analysed), **on_plot)
    api_endpoint(h, ctx)

    def open_step(inputs: list) -> dict:
        return dict(fn=h.open_step, inputs=inputs, outputs=ui.outputs(OpenedStep), **on_plot)

    def restore(restored: gr.State) -> dict:
        return dict(fn=h.restore, inputs=[restored], outputs=ui.outputs(Analysed), **on_plot)

    return AttentionTab(ui.text, analyse, open_step, {"view": ui.view, **c._asdict()}, restore)


def build(tab: gr.Tab, ctx: AppContext) -> AttentionTab:
    """The Attention tab's contents, built inside ``tab`` (whose first opening draws the default text)."""
    cur = ctx.manager.current
    ui = layout(cur.n_layers if cur is not None else 12, cur.n_heads if cur is not None else 12)
    return wire(tab, ui, AttentionHandlers(ctx.manager, ctx.cache, ctx.gpu, ctx.exports), ctx)
