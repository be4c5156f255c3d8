"""Plotly figures of attention weights, and the plain-language notes that go beside them.

Input is the plain data of :mod:`demo.analysis.attention`: an :class:`AttentionResult` (numpy weights and
token labels) and a valid :class:`AttentionView`, whose numbers come from ``view_matrix`` like the
API's and the exports'; output is a ``plotly.graph_objects.Figure``. No Gradio here.

Readability rules shared by every view: rows are the token doing the looking (query) and run top to
bottom, columns are the token looked at (key); the empty upper triangle is grey (NaN over a grey
background) while a weight of 0 is white; the colour bar is titled "attention weight"; hovering a
square gives query, key and weight. A matrix of more than ``FULL_CAP`` tokens is shown in blocks of
several tokens (a notice says so); each small multiple of the all-heads view is capped at
``GRID_CAP`` blocks a side.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from demo.analysis.attention import (
    AGGREGATES,
    AttentionResult,
    AttentionView,
    ViewMatrix,
    axis_labels,
    block_ranges,
    block_size,
    pool_causal,
    view_matrix,
)
from demo.core.tokens import plot_escape, shorten
from demo.plots.style import FONT, SEQUENTIAL

FULL_CAP = 256  # tokens shown one by one in a big heatmap; more are grouped in blocks
# Readable from the back of a classroom: every token of a text up to this long has its label, in TICK_PX
# text on a row at least ROW_PX tall (a 120-token text: a figure ~1,800 px tall, scrolled like a page).
LABEL_EVERY_UP_TO = 128
TICK_PX = 12
ROW_PX = 13
GRID_CAP = 96  # blocks per side in each small multiple of the all-heads view
COLORSCALE = SEQUENTIAL
EMPTY_COLOR = "#d4d4d4"  # the causal triangle (nothing there) shows the plot background
X_TITLE = "token looked at (key)"
Y_TITLE = "token doing the looking (query)"
COLORBAR_TITLE = "attention weight"

HOW_TO_READ = (
    "**How to read it.** Each **row** is a token *doing the looking* (the query); each **column** is a token it "
    "*looks at* (the key). The darker the square, the more attention that row's token pays to that column's "
    "token; every row adds up to 1 (100 %). The **grey triangle** at the top right is empty because a GPT only "
    "looks back: a token cannot see the tokens after it. Hover a square for the exact numbers. (The colour scale "
    "stops at the strongest weight below the first row: the first token can only look at itself, so its square "
    "is always 1.)")

PATTERNS = (
    "**Patterns to look for.** A dark line just left of the diagonal: a *previous-token head* (each token looks "
    "at the one before it). A dark first column: the head *parks* its attention on the first token when nothing "
    "else is useful. A dark diagonal: tokens looking at themselves. Diagonal stripes further away when a phrase "
    "repeats: an *induction-like* head (it looks at what followed the same words last time).")


# ----------------------------------------------------------------------------- helpers



def block_labels(tokens, block: int) -> list[str]:
    """Axis labels: '␣the (5)' per token, or '8–15: ␣the…␣sea' per block of tokens (always unique)."""
    if block <= 1:
        return [plot_escape(t) for t in axis_labels(tokens)]
    return [plot_escape(f"{a}–{b}: {shorten(tokens[a], 10)}…{shorten(tokens[b], 10)}" if b > a
                        else f"{a}: {shorten(tokens[a], 10)}") for a, b in block_ranges(len(tokens), block)]


def _masked(matrix: np.ndarray) -> np.ndarray:
    """A causal [T, T] matrix with the upper triangle set to NaN (drawn as the grey background)."""
    m = np.array(matrix, dtype=np.float32, copy=True)
    t = m.shape[-1]
    m[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = np.nan
    return m


def _prepare(matrix: np.ndarray, tokens, cap: int) -> tuple[np.ndarray, list[str], int]:
    """Mask (and block-pool when longer than `cap`) a causal matrix; returns (z, labels, block)."""
    block = block_size(len(tokens), cap)
    z = _masked(matrix) if block == 1 else pool_causal(matrix, block)
    return z, block_labels(tokens, block), block


def _zmax(z: np.ndarray, skip_first_row: bool = True) -> float:
    """Top of the colour scale: the strongest weight, leaving out the first row (the first token can
    only look at itself, so it is always 1 and would wash out every other square)."""
    body = z[1:] if skip_first_row and z.shape[0] > 1 else z
    finite = body[np.isfinite(body)]
    top = float(finite.max()) if finite.size else 1.0
    return top if top > 0 else 1.0


def _hover(block: int, what: str = "weight") -> str:
    if block == 1:
        return ("query (looking): %{y}<br>key (looked at): %{x}<br>" + what + ": %{z:.4f}<extra></extra>")
    return ("queries (looking): tokens %{y}<br>keys (looked at): tokens %{x}<br>" + what +
            ", summed over the block's keys and averaged over its queries: %{z:.4f}<extra></extra>")


def _axes(fig: go.Figure, n: int, row=None, col=None, show_labels: bool = True, titles: bool = True):
    every = n <= LABEL_EVERY_UP_TO
    common = dict(type="category", showgrid=False, zeroline=False, showticklabels=show_labels,
                  tickfont=dict(size=TICK_PX), ticks="", automargin=True)
    if every:
        common["dtick"] = 1
    # upright labels take the least width per column once columns get narrow
    fig.update_xaxes(title_text=X_TITLE if titles else None, tickangle=-60 if n <= 48 else -90, side="bottom",
                     row=row, col=col, **common)
    fig.update_yaxes(title_text=Y_TITLE if titles else None, autorange="reversed", row=row, col=col, **common)


def _layout(fig: go.Figure, title: str, height: int):
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)),
        height=height, margin=dict(l=10, r=10, t=60, b=10), font=FONT,
        plot_bgcolor=EMPTY_COLOR, paper_bgcolor="white", hoverlabel=dict(font_size=13),
    )


def _colorbar(zmax: float) -> dict:
    return dict(title=dict(text=COLORBAR_TITLE, side="right"), thickness=14, len=0.8, tickformat=".2f")


def _height(n: int) -> int:
    """A row per token at least ROW_PX tall while every token is labelled (the labels must not overlap),
    the rest for the title, the column labels and the margins."""
    if n <= LABEL_EVERY_UP_TO:
        return int(max(560, 240 + ROW_PX * n))
    return 900


def _square_heatmap(z, labels, block, title, hover_what="weight") -> go.Figure:
    n = len(labels)
    zmax = _zmax(z)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale=COLORSCALE, zmin=0.0, zmax=zmax, hoverongaps=False,
        colorbar=_colorbar(zmax), hovertemplate=_hover(block, hover_what), xgap=0.5 if n <= 64 else 0,
        ygap=0.5 if n <= 64 else 0))
    _axes(fig, n)
    _layout(fig, title, _height(n))
    return fig


# ----------------------------------------------------------------------------- views


def figure(result: AttentionResult, view: AttentionView, vm: ViewMatrix | None = None) -> go.Figure:
    """The figure of a view (valid for ``result``): a heatmap, or small multiples for 'heads'. ``vm``
    is ``view_matrix(result, view)`` when the caller has it already."""
    vm = vm or view_matrix(result, view)
    if view.kind == "heads":
        return _heads_figure(result, view, vm)
    if view.kind == "token":
        return _focus_figure(result, view, vm)
    z, labels, block = _prepare(vm.values, result.tokens, FULL_CAP)
    if view.kind == "head":
        return _square_heatmap(z, labels, block, f"Layer {view.layer}, head {view.head} — where each token looks")
    how, _, over = view.aggregate.partition("-")
    what = "average weight" if how == "mean" else "strongest weight"
    scope = {"heads": f"the {result.n_heads} heads of layer {view.layer}",
             "layers": f"head {view.head} of all {result.n_layers} layers",
             "all": f"all {result.n_layers * result.n_heads} heads of all {result.n_layers} layers"}[over]
    title = f"{'Average' if how == 'mean' else 'Maximum'} over {scope}"
    return _square_heatmap(z, labels, block, title, hover_what=what)


def _heads_figure(result: AttentionResult, view: AttentionView, vm: ViewMatrix, cap: int = GRID_CAP,
                  cols: int | None = None) -> go.Figure:
    """All heads of one layer as small multiples with one shared colour scale."""
    stack = vm.values
    n_heads = stack.shape[0]
    block = block_size(result.n_tokens, cap)
    z_all = _masked(stack) if block == 1 else pool_causal(stack, block)
    labels = block_labels(result.tokens, block)
    n = len(labels)
    cols = cols or (2 if n_heads <= 4 else 3 if n_heads in (6, 9) else 4)
    rows = math.ceil(n_heads / cols)
    show_labels = n <= 16
    gx = 0.03 if not show_labels else 0.09
    gy = (0.05 if not show_labels else 0.11) if rows > 1 else 0.0
    w = (1 - (cols - 1) * gx) / cols
    hgt = (1 - (rows - 1) * gy) / rows
    # Built as plain dicts (make_subplots + per-axis updates cost ~10 ms a head).
    axis = dict(type="category", showgrid=False, zeroline=False, showticklabels=show_labels, ticks="",
                tickfont=dict(size=9), constrain="domain")
    if show_labels:
        axis["dtick"] = 1
    zmax = max(_zmax(z) for z in z_all)  # one scale for every head, so they compare at a glance
    layout: dict = dict(coloraxis=dict(colorscale=COLORSCALE, cmin=0.0, cmax=zmax, colorbar=_colorbar(zmax)))
    traces, annotations = [], []
    for h in range(n_heads):
        r, c = divmod(h, cols)
        x0 = c * (w + gx)
        y1 = 1 - r * (hgt + gy)
        sfx = "" if h == 0 else str(h + 1)
        layout[f"xaxis{sfx}"] = dict(axis, domain=[round(x0, 6), min(1.0, round(x0 + w, 6))], anchor=f"y{sfx}",
                                     tickangle=-60)
        layout[f"yaxis{sfx}"] = dict(axis, domain=[max(0.0, round(y1 - hgt, 6)), round(y1, 6)], anchor=f"x{sfx}",
                                     autorange="reversed",
                                     scaleanchor=f"x{sfx}", scaleratio=1)
        traces.append(go.Heatmap(z=z_all[h], x=labels, y=labels, coloraxis="coloraxis", hoverongaps=False,
                                 xaxis=f"x{sfx}", yaxis=f"y{sfx}", hovertemplate=f"head {h}<br>" + _hover(block)))
        annotations.append(dict(text=f"<b>head {h}</b>", x=x0 + w / 2, y=y1, xref="paper", yref="paper",
                                xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=13)))
    layout["annotations"] = annotations
    fig = go.Figure(data=traces, layout=layout)
    per_row = (330 if cols <= 2 else 250) if not show_labels else 360
    _layout(fig, f"Layer {view.layer}: all {n_heads} heads (rows: token looking, columns: token looked at)",
            90 + rows * per_row)
    return fig


def _focus_figure(result: AttentionResult, view: AttentionView, vm: ViewMatrix) -> go.Figure:
    """Where one query token looks: one row per head (of the layer, or of every layer), one column per
    token up to and including it."""
    q = view.token
    rows_m, row_labels = vm.values, vm.row_labels
    col_labels = [plot_escape(t) for t in vm.col_labels]
    n_rows = len(row_labels)
    zmax = _zmax(rows_m, skip_first_row=False) if q > 0 else 1.0
    fig = go.Figure(go.Heatmap(
        z=rows_m, x=col_labels, y=row_labels, colorscale=COLORSCALE, zmin=0.0, zmax=zmax, colorbar=_colorbar(zmax),
        xgap=0.5 if q < 64 else 0, ygap=0.5 if n_rows <= 32 else 0,
        # the query's label goes in as data: text spliced into a template could hold '%{'
        customdata=[[plot_escape(axis_labels(result.tokens)[q])] * (q + 1)] * n_rows,
        hovertemplate="%{y}<br>%{customdata} looks at %{x}<br>weight: %{z:.4f}<extra></extra>"))
    _axes(fig, q + 1, titles=False)
    fig.update_xaxes(title_text=X_TITLE)
    fig.update_yaxes(title_text="layer L, head H", dtick=1 if n_rows <= 48 else None,
                     tickfont=dict(size=11 if n_rows <= 32 else 8))
    if view.scope == "all" and result.n_heads > 1:  # a line between layers
        for lay in range(1, result.n_layers):
            y = lay * result.n_heads - 0.5
            fig.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y,
                          line=dict(color="#444", width=1))
    row_px = 28 if n_rows <= 16 else max(7, int(900 / n_rows))
    _layout(fig, f"Where “{plot_escape(result.tokens[q])}” (token {q}) looks — {view.describe()}",
            int(min(1100, 190 + row_px * n_rows)))
    return fig


# ----------------------------------------------------------------------------- plain-language notes


def caption(view: AttentionView, result: AttentionResult | None = None) -> str:
    """The note shown beside a view: what it shows and how to read it (markdown)."""
    if view.kind == "head":
        return (f"### One head\nAn attention head is one of the small \"looking\" units inside a layer: "
                f"layer {view.layer}, head {view.head} here (counting from 0).\n\n{HOW_TO_READ}\n\n{PATTERNS}")
    if view.kind == "heads":
        return (f"### All heads of layer {view.layer}\nEvery head of the layer side by side, all on the same colour "
                "scale, so you can compare them at a glance and spot the ones with a clear pattern. "
                "Rows are the tokens doing the looking, columns the tokens looked at, exactly as in *One head*. "
                "Hover a square for the tokens and the weight. To see a head big, choose it in **Head** and "
                f"press **Open this head**.\n\n{PATTERNS}")
    if view.kind == "aggregate":
        extra = ("The **average** shows where the heads look *together*; each row still adds up to 1."
                 if view.aggregate.startswith("mean") else
                 "The **maximum** keeps, for each square, the strongest weight any of the heads gives it: "
                 "one head staring at a token is enough to make it dark. Rows no longer add up to 1.")
        return f"### {AGGREGATES[view.aggregate]}\nMany heads combined into one picture. {extra}\n\n{HOW_TO_READ}"
    who = ""
    if result is not None:  # token text is data, not markup
        who = f" — here “{html.escape(result.tokens[view.token])}” (token {view.token})"
    rows = (f"each **row** is one head of layer {view.layer}" if view.scope == "layer" else
            "each **row** is one head (L = layer, H = head; layer 0 at the top)")
    return (f"### Where one token looks{who}\nOne token, every head at once: {rows}; each **column** is a token "
            "it can look at (the earlier tokens and itself). Dark squares show what that head pays attention "
            "to when the model is at this token, i.e. when it predicts the *next* token. Each row adds up "
            "to 1.\n\nChoose the token in **Token doing the looking**, or click it in the text under the plot.")


def pooling_notice(result: AttentionResult, view: AttentionView) -> str | None:
    """A sentence when the view shows blocks of tokens instead of single tokens."""
    cap = GRID_CAP if view.kind == "heads" else FULL_CAP if view.kind in ("head", "aggregate") else None
    if cap is None or result.n_tokens <= cap:
        return None
    block = block_size(result.n_tokens, cap)
    return (f"ℹ️ {result.n_tokens} tokens are too many squares to read one by one, so each square here is a block "
            f"of {block} tokens (its shade is the attention the block's tokens pay to the other block's tokens, "
            f"summed over those and averaged over these). For token-by-token detail use the *One token* view "
            "or export the exact numbers.")
