"""The figure and the table of "The cost of 8 bits": how far a lower precision strays from the reference.

Input is the plain data of :meth:`demo.analysis.precision.PrecisionComparison.as_dict` (dicts and lists,
what the API returns too); output is a ``plotly.graph_objects.Figure`` or rows for a CSV export. Token
text is untrusted and always escaped. No Gradio here.

The figure has two panels: on top, per position, the KL divergence in bits between the two models'
next-token distributions (red markers where the most likely token changed); below, per layer, the
largest and the mean difference between the two models' attention weights.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from demo.core import exports
from demo.core.tokens import plot_escape, shorten
from demo.plots.next_token import MONO, empty_figure
from demo.plots.style import FONT

KL_COLOR = "#1f5fa8"
CHANGED_COLOR = "#d62728"  # the top-1 token changed
MAX_DIFF_COLOR = "#fd8d3c"
MEAN_DIFF_COLOR = "#9e9ac8"
LABELLED_POSITIONS = 48  # up to this many positions, each tick is labelled with its token

__all__ = ["csv_rows", "csv_text", "empty_figure", "figure"]



def _kl_hover(data: dict) -> tuple[list[list], str]:
    """customdata per position and the hover template of the KL panel."""
    ref, other, n = data["reference_precision"], data["other_precision"], data["top_n"]
    custom = []
    for i, tok in enumerate(data["tokens"]):
        nxt = data["next_tokens"][i]
        custom.append([
            plot_escape(tok),
            plot_escape(data["top1_ref_tokens"][i]),
            plot_escape(data["top1_other_tokens"][i]),
            f"{100 * data['top_overlap'][i]:.0f} %",
            "same top choice" if data["agree"][i] else "<b>top choice changed</b>",
            f"actually followed by {plot_escape(nxt)}" if nxt is not None else "the next token is not in the text",
        ])
    hover = (f"position %{{x}}, after <b>%{{customdata[0]}}</b><br>{ref} top choice: %{{customdata[1]}}<br>"
             f"{other} top choice: %{{customdata[2]}}<br>%{{customdata[4]}}<br>KL: %{{y:.3g}} bits<br>"
             f"top-{n} overlap: %{{customdata[3]}}<br>%{{customdata[5]}}<extra></extra>")
    return custom, hover


def figure(data: dict) -> go.Figure:
    """Two stacked panels from ``PrecisionComparison.as_dict()``: the KL divergence per position (top;
    red markers where the top-1 token changed) and the largest and mean attention-weight difference per
    layer (bottom)."""
    n = data["n_positions"]
    if not n:
        return empty_figure("No tokens to compare")
    ref, other = data["reference_precision"], data["other_precision"]
    positions = list(range(n))
    changed = [i for i in positions if not data["agree"][i]]
    # plotly leaves an empty trace out of the legend: with no change the panel's title says so instead
    never = "" if changed else " (the top choice never changed)"
    labelled = n <= LABELLED_POSITIONS
    fig = make_subplots(
        rows=2, cols=1, vertical_spacing=0.3 if labelled else 0.2, row_heights=[0.6, 0.4],
        subplot_titles=(f"Next-token predictions: how far {other} is from {ref} at each position{never}",
                        f"Attention weights: {other} minus {ref}, per layer"))

    custom, hover = _kl_hover(data)
    mode = "lines+markers" if n <= 200 else "lines"
    fig.add_trace(go.Scatter(
        x=positions, y=data["kl_bits"], mode=mode, name=f"KL({ref} ‖ {other}), bits", customdata=custom,
        hovertemplate=hover, line=dict(color=KL_COLOR, width=1.5), marker=dict(color=KL_COLOR, size=5)),
        row=1, col=1)
    fig.add_trace(go.Scatter(
        x=changed, y=[data["kl_bits"][i] for i in changed], mode="markers", customdata=[custom[i] for i in changed],
        name=f"top choice changed ({len(changed)} of {n})", hovertemplate=hover,
        marker=dict(color=CHANGED_COLOR, size=10, symbol="circle-open", line=dict(width=2.5))),
        row=1, col=1)

    layers = list(range(data["n_layers"]))
    bars = dict(x=layers, textposition="outside", texttemplate="%{y:.2g}", cliponaxis=False)
    fig.add_trace(go.Bar(
        y=data["attn_max_diff"], name="largest |difference| (any head, query, key)", marker_color=MAX_DIFF_COLOR,
        hovertemplate="layer %{x}<br>largest |difference|: %{y:.3g}<extra></extra>", **bars), row=2, col=1)
    fig.add_trace(go.Bar(
        y=data["attn_mean_diff"], name="mean |difference| (every head, key ≤ query)", marker_color=MEAN_DIFF_COLOR,
        hovertemplate="layer %{x}<br>mean |difference|: %{y:.3g}<extra></extra>", **bars), row=2, col=1)

    x_kl = dict(title_text="position: the token after which the prediction is made", range=[-0.5, n - 0.5],
                zeroline=False)
    if labelled:
        x_kl.update(tickmode="array", tickvals=positions, tickangle=-60, tickfont=dict(family=MONO, size=10),
                    ticktext=[f"{i}: {plot_escape(shorten(t, 10))}" for i, t in enumerate(data["tokens"])])
    fig.update_xaxes(row=1, col=1, **x_kl)
    fig.update_yaxes(title_text="KL divergence (bits)", rangemode="tozero", row=1, col=1)
    fig.update_xaxes(title_text="layer", tickmode="linear", dtick=1, row=2, col=1)
    fig.update_yaxes(title_text="|difference| in attention weight", rangemode="tozero", row=2, col=1)
    fig.update_layout(
        title=dict(text=plot_escape(f"{data['model']}: {other} vs {ref}, token by token"), x=0.01,
                   xanchor="left", y=0.99, yref="container", yanchor="top", font=dict(size=15)),
        height=680 if labelled else 600, margin=dict(l=10, r=10, t=130, b=10), font=FONT,
        barmode="group", bargap=0.3, plot_bgcolor="white", paper_bgcolor="white",
        legend=dict(orientation="h", yanchor="bottom", y=1.06, xanchor="left", x=0),
        hoverlabel=dict(font=dict(family=MONO, size=12)),
    )
    fig.update_xaxes(showgrid=True, gridcolor="#eee", automargin=True)
    # '3.5e-07', not plotly's SI '350n' (nano what?)
    fig.update_yaxes(showgrid=True, gridcolor="#eee", automargin=True, tickformat=".2~g")
    return fig


# ----------------------------------------------------------------------------- export


def csv_rows(data: dict) -> list[list]:
    """The per-position table, header first: position, the token after which the prediction is made,
    both models' top-1 tokens, whether they agree, the KL in bits and the top-n overlap. Token labels
    are left as they are (the CSV writer quotes them)."""
    ref, other = data["reference_precision"], data["other_precision"]
    rows: list[list] = [["position", "after token", f"top1 reference ({ref})", f"top1 other ({other})", "agree",
                         "kl_bits", f"top{data['top_n']}_overlap"]]
    for i in range(data["n_positions"]):
        rows.append([i, data["tokens"][i], data["top1_ref_tokens"][i], data["top1_other_tokens"][i],
                     bool(data["agree"][i]), data["kl_bits"][i], data["top_overlap"][i]])
    return rows


def csv_text(data: dict) -> str:
    """:func:`csv_rows` as CSV text."""
    return exports.csv_text(csv_rows(data))
