"""The Attention tab: a text, a view (one head, all heads of a layer, average/max, one token), the
plotly heatmap with a plain-language note beside it, a clickable token strip, exports, and the public
``/attention`` API endpoint.

Handlers only validate, fetch the (cached) attention from :mod:`demo.attention` and format it with
:mod:`demo.plots_attention`: switching layer, head or view reuses the cached forward pass.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np

from . import attention as A
from . import plots_attention as P
from .components import MODEL_QUEUE
from .gpu import gpu

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
EXPORT_DIR = Path(tempfile.gettempdir()) / "gpt-explorer-attention"
EXPORT_KEEP_S = 15 * 60

VIEW_CHOICES = [(label, key) for key, label in A.VIEWS.items()]
AGG_CHOICES = [(label, key) for key, label in A.AGGREGATES.items()]
SCOPE_CHOICES = [(label, key) for key, label in A.SCOPES.items()]


def _as_gr_error(exc: Exception) -> gr.Error:
    from .ui import as_gr_error  # late import: ui imports this module

    return as_gr_error(exc)


# ----------------------------------------------------------------------------- data access


@gpu
def _compute(manager, text):
    return A.get_attention(manager.require(), text)


def fetch(manager, text) -> A.AttentionResult:
    """The attention of `text` under the model in service: from the cache, else one forward pass (on
    the GPU under ZeroGPU)."""
    loaded = manager.require()
    hit = A.CACHE.peek(loaded, text)
    return hit if hit is not None else _compute(manager, text)


def _clamp(value, hi: int, default: int = 0) -> int:
    """Slider values coming from the page for a model that may have changed: clamp instead of failing."""
    try:
        v = int(round(float(value)))
    except (TypeError, ValueError, OverflowError):
        return default
    return min(max(v, 0), hi)


# ----------------------------------------------------------------------------- formatting


def _view_params(result: A.AttentionResult, view, layer, head, aggregate, token, scope) -> dict:
    """Validate one view request against a result (raises ValidationError with a clear sentence)."""
    return dict(view=A.check_view(view), layer=A.check_layer(result, layer), head=A.check_head(result, head),
                aggregate=A.check_aggregate(aggregate), token=A.check_token(result, token),
                scope=A.check_scope(scope))


def notice_text(result: A.AttentionResult, view: str, cached: bool | None = None) -> str:
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


def strip_value(result: A.AttentionResult, p: dict) -> list[tuple[str, float | None]]:
    """The tokens as a clickable strip, shaded by where the chosen token looks in the current view."""
    q = p["token"]
    if p["view"] == "head":
        row = result.weights[p["layer"], p["head"], q, : q + 1]
    elif p["view"] == "aggregate":
        how, _, over = p["aggregate"].partition("-")
        w = result.weights
        stack = (w[p["layer"], :, q, : q + 1] if over == "heads" else w[:, p["head"], q, : q + 1] if over == "layers"
                 else w[:, :, q, : q + 1].reshape(-1, q + 1))
        row = stack.mean(axis=0) if how == "mean" else stack.max(axis=0)
    elif p["view"] == "token" and p["scope"] == "all":
        row = result.weights[:, :, q, : q + 1].reshape(-1, q + 1).mean(axis=0)
    else:
        row = result.weights[p["layer"], :, q, : q + 1].mean(axis=0)
    top = float(row.max()) or 1.0
    out: list[tuple[str, float | None]] = [(t, round(float(v) / top, 3)) for t, v in zip(result.tokens, row)]
    out += [(t, None) for t in result.tokens[q + 1:]]
    return out


def strip_label(result: A.AttentionResult, p: dict) -> str:
    q = p["token"]
    what = {"head": f"layer {p['layer']}, head {p['head']}",
            "heads": f"average of the heads of layer {p['layer']}",
            "aggregate": A.AGGREGATES[p["aggregate"]].lower(),
            "token": (f"average of the heads of layer {p['layer']}" if p["scope"] == "layer"
                      else "average of every head")}[p["view"]]
    return (f"Where “{result.tokens[q]}” (token {q}) looks — {what}; darker = more attention. "
            "Click any token to see where it looks.")


def render(result: A.AttentionResult, p: dict, cached: bool | None = None):
    """(figure, note, notice, strip update) for validated view parameters."""
    fig = P.figure_for(result, p["view"], p["layer"], p["head"], p["aggregate"], p["token"], p["scope"])
    note = P.caption(p["view"], result, p["layer"], p["head"], p["aggregate"], p["token"], p["scope"])
    strip = gr.HighlightedText(value=strip_value(result, p), label=strip_label(result, p))
    return fig, note, notice_text(result, p["view"], cached), strip


def token_choices(result: A.AttentionResult) -> list[tuple[str, int]]:
    return [(f"{i}: {t}", i) for i, t in enumerate(result.tokens)]


def api_payload(result: A.AttentionResult, p: dict) -> dict:
    """JSON result of /attention: tokens, the layer/head matrix, and the matrix the view shows."""
    data = A.matrix_payload(result, p["layer"], p["head"])
    data.update(view=p["view"], aggregate=p["aggregate"], token=p["token"], scope=p["scope"],
                notice=result.notice())
    if p["view"] == "aggregate":
        data["view_weights"] = np.round(A.aggregate_matrix(result, p["aggregate"], p["layer"], p["head"])
                                        .astype(np.float64), 6).tolist()
    elif p["view"] == "token":
        rows, labels = A.focus_matrix(result, p["token"], p["scope"], p["layer"])
        data["view_rows"] = labels
        data["view_weights"] = np.round(rows.astype(np.float64), 6).tolist()
    return data


# ----------------------------------------------------------------------------- export


def export_files(result: A.AttentionResult, p: dict) -> list[str]:
    """CSV + JSON of the matrix the view shows (exact values, not the blocks of a long text)."""
    view = p["view"]
    labels = A.axis_labels(result.tokens, max_chars=1000)
    base = {"model": result.model_name, "precision": result.precision, "view": view, "tokens": list(result.tokens),
            "token_ids": list(result.token_ids)}
    if view == "head":
        m = result.weights[p["layer"], p["head"]]
        name = f"attention_layer{p['layer']}_head{p['head']}"
        csv = A.matrix_csv(m, labels, labels)
        data = {**base, "layer": p["layer"], "head": p["head"], "weights": m}
    elif view == "aggregate":
        m = A.aggregate_matrix(result, p["aggregate"], p["layer"], p["head"])
        name = f"attention_{p['aggregate']}_layer{p['layer']}_head{p['head']}"
        csv = A.matrix_csv(m, labels, labels)
        data = {**base, "aggregate": p["aggregate"], "layer": p["layer"], "head": p["head"], "weights": m}
    elif view == "heads":
        m = result.weights[p["layer"]]
        if m.size > EXPORT_MAX_NUMBERS:
            raise A.ValidationError(f"This layer holds {m.size:,} weights, too many for one file: "
                                    "export one head at a time (One head view).")
        name = f"attention_layer{p['layer']}_all_heads"
        csv = "".join(f"# head {h}\n" + A.matrix_csv(m[h], labels, labels) for h in range(m.shape[0]))
        data = {**base, "layer": p["layer"], "weights": m}
    else:
        m, rows = A.focus_matrix(result, p["token"], p["scope"], p["layer"])
        name = f"attention_token{p['token']}_{p['scope']}"
        csv = A.matrix_csv(m, rows, labels[: p["token"] + 1], corner="head \\ key")
        data = {**base, "token": p["token"], "scope": p["scope"], "rows": rows, "weights": m}
    if m.size > EXPORT_MAX_NUMBERS:
        raise A.ValidationError(f"This view holds {m.size:,} weights, too many for one file.")
    data["weights"] = np.round(np.asarray(data["weights"], dtype=np.float64), 6).tolist()
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in EXPORT_DIR.glob("*/*"):  # keep the folder small: drop exports older than EXPORT_KEEP_S
        try:
            if now - old.stat().st_mtime > EXPORT_KEEP_S:
                old.unlink()
                old.parent.rmdir()
        except OSError:
            pass
    folder = Path(tempfile.mkdtemp(dir=EXPORT_DIR))
    csv_path, json_path = folder / f"{name}.csv", folder / f"{name}.json"
    csv_path.write_text(csv, encoding="utf-8")
    json_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return [str(csv_path), str(json_path)]


# ----------------------------------------------------------------------------- handlers


def make_handlers(manager) -> dict:
    def analyse(text, analysed, view, layer, head, aggregate, token, scope):
        """Run (or reuse) the forward pass for `text` and show the chosen view; resets what no longer fits
        (a new text starts on its last token; another model may have fewer layers or heads)."""
        try:
            loaded = manager.require()
            hit = A.CACHE.peek(loaded, text) is not None
            result = fetch(manager, text)
            layer = _clamp(layer, result.n_layers - 1)
            head = _clamp(head, result.n_heads - 1)
            same_text = isinstance(analysed, str) and analysed == result.text
            tok = _clamp(token, result.n_tokens - 1) if same_text and token is not None else result.n_tokens - 1
            p = _view_params(result, view, layer, head, aggregate, tok, scope)
            fig, note, notice, strip = render(result, p, cached=hit)
        except Exception as exc:  # noqa: BLE001
            raise _as_gr_error(exc) from exc
        return (fig, note, notice, strip,
                gr.Slider(maximum=max(1, result.n_layers - 1), value=p["layer"], interactive=result.n_layers > 1),
                gr.Slider(maximum=max(1, result.n_heads - 1), value=p["head"], interactive=result.n_heads > 1),
                gr.Dropdown(choices=token_choices(result), value=p["token"]),
                result.text)

    def switch(analysed, text, view, layer, head, aggregate, token, scope):
        """Another layer / head / view of the analysed text (cached: no forward pass)."""
        try:
            loaded = manager.require()
            source = analysed or text
            fresh = A.CACHE.peek(loaded, source) is None
            result = fetch(manager, source)
            try:
                p = _view_params(result, view, layer, head, aggregate, token, scope)
            except A.ValidationError as exc:
                if fresh:  # another model was loaded since the controls were set
                    raise A.ValidationError(f"{exc}. The model changed: press Show attention to analyse the "
                                            "text again.") from exc
                raise
            return render(result, p)
        except Exception as exc:  # noqa: BLE001
            raise _as_gr_error(exc) from exc

    def export(analysed, text, view, layer, head, aggregate, token, scope):
        try:
            result = fetch(manager, analysed or text)
            return export_files(result, _view_params(result, view, layer, head, aggregate, token, scope))
        except Exception as exc:  # noqa: BLE001
            raise _as_gr_error(exc) from exc

    def api_attention(text, layer, head, view, aggregate, token, scope):
        """The attention of `text`: the figure of the chosen view, and JSON with the tokens and the
        [T, T] weight matrix of `layer`/`head` (rows = query, columns = key; each row sums to 1).

        view: head | heads | aggregate | token. aggregate: mean-heads | max-heads | mean-layers | max-layers |
        mean-all | max-all. token: query position for view 'token' (-1 = last). scope: layer | all."""
        try:
            if not isinstance(text, str):
                raise A.ValidationError(f"text must be text, got {type(text).__name__}")
            result = fetch(manager, text)
            p = _view_params(result, view, layer, head, aggregate, token, scope)
            fig = P.figure_for(result, p["view"], p["layer"], p["head"], p["aggregate"], p["token"], p["scope"])
            return fig, api_payload(result, p)
        except Exception as exc:  # noqa: BLE001
            raise _as_gr_error(exc) from exc

    return dict(analyse=analyse, switch=switch, export=export, api_attention=api_attention)


def view_controls(view):
    """Which controls each view uses."""
    view = view if view in A.VIEWS else "head"
    return (gr.Slider(visible=True),  # layer
            gr.Slider(visible=view in ("head", "heads", "aggregate"),
                      label="Head to open" if view == "heads" else "Head"),
            gr.Dropdown(visible=view == "aggregate"),
            gr.Dropdown(visible=view in ("token",)),
            gr.Radio(visible=view == "token"),
            gr.Button(visible=view == "heads"))


# ----------------------------------------------------------------------------- layout


def build_attention_tab(manager) -> dict:
    from gradio.context import Context

    tab = Context.block  # the gr.Tab this is built in (ui.py): compute the default text when first opened
    cur = manager.current
    n_layers = cur.model.config.num_hidden_layers if cur is not None else 12
    n_heads = cur.model.config.num_attention_heads if cur is not None else 12
    h = make_handlers(manager)

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
            note = gr.Markdown(P.caption("head", None, 0, 0), elem_id="attention-note")
    strip = gr.HighlightedText(label="The text as tokens — click a token to see where it looks",
                               show_legend=False, combine_adjacent=False, interactive=False,
                               elem_id="attention-strip")
    with gr.Accordion("Save this view", open=False):
        gr.Markdown("**Picture:** hover the plot and click the camera icon (top right of the plot) to download "
                    "it as a PNG.  \n**Numbers:** the button writes the exact weights of this view (token by "
                    "token, even when the picture groups tokens in blocks) as CSV and JSON.")
        export_btn = gr.Button("Prepare CSV + JSON", size="sm")
        files = gr.File(label="Download", file_count="multiple", interactive=False)
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
    api_btn.click(h["api_attention"], [api_text, api_layer, api_head, api_view, api_aggregate, api_token, api_scope],
                  [api_plot, api_data], api_name="attention", **MODEL_QUEUE)

    settings = [view, layer, head, aggregate, token, scope]
    shown = [plot, note, notice, strip]
    analyse_event = dict(fn=h["analyse"], inputs=[text, analysed, *settings],
                         outputs=[*shown, layer, head, token, analysed], api_visibility="private",
                         show_progress_on=[plot], **MODEL_QUEUE)
    show_btn.click(**analyse_event)
    text.submit(**analyse_event)
    switch = dict(fn=h["switch"], inputs=[analysed, text, *settings], outputs=shown, api_visibility="private",
                  show_progress="minimal", show_progress_on=[plot])
    view.input(view_controls, view, [layer, head, aggregate, token, scope, open_btn], api_visibility="private",
               queue=False).then(**switch)
    for c in (layer, head):
        c.release(**switch)
    for c in (aggregate, token, scope):
        c.input(**switch)
    open_btn.click(lambda: "head", None, view, api_visibility="private", queue=False).then(
        view_controls, view, [layer, head, aggregate, token, scope, open_btn], api_visibility="private",
        queue=False).then(**switch)

    def pick_token(evt: gr.SelectData):
        """A click on a token of the strip: that token, in the One token view."""
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return (index if isinstance(index, int) else gr.skip()), "token"

    strip.select(pick_token, None, [token, view], api_visibility="private", queue=False).then(
        view_controls, view, [layer, head, aggregate, token, scope, open_btn], api_visibility="private",
        queue=False).then(**switch)
    export_btn.click(h["export"], [analysed, text, *settings], files, api_visibility="private")

    if isinstance(tab, gr.Tab):  # first visit: show the default text without a click
        def first_visit(text_, done, *args):
            if done is not None:
                return (gr.skip(),) * 8
            try:
                return h["analyse"](text_, done, *args)
            except gr.Error:
                return (gr.skip(),) * 8

        tab.select(first_visit, [text, analysed, *settings], [*shown, layer, head, token, analysed],
                   api_visibility="private", show_progress_on=[plot], **MODEL_QUEUE)

    return {"text": text, "on_text": analyse_event}
