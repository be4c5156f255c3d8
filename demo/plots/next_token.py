"""Figures and HTML for the next-token view: probability bars (raw vs after the settings), the logit
lens heatmap, and generated text coloured by the probability of each token. Input is the plain data
of :mod:`demo.analysis.next_token` (dicts and lists); token text is untrusted and always escaped."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from demo.core.tokens import plot_escape, shorten
from demo.plots.style import SEQUENTIAL

RAW_COLOR = "#9ecae1"  # the model's own probability
RAW_FILTERED_COLOR = "#d9d9d9"
AFTER_COLOR = "#1f5fa8"  # after the sampling settings
FILTERED_TEXT = "#8c8c8c"
DRAWN_COLOR = "#d62728"  # the token a generation drew, in the view of its step
ENTROPY_COLOR = "#7f7f7f"
MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"

# probability of a generated token -> background colour (expected: blue … surprising: red)
PROB_BINS = [
    (0.8, "#c6dbef", "80–100%"),
    (0.5, "#d9f0d3", "50–80%"),
    (0.2, "#fff2a8", "20–50%"),
    (0.05, "#fdc48a", "5–20%"),
    (0.0, "#f59a8c", "under 5%"),
]


def fmt_bits(bits: float) -> str:
    """0.42 · 0.00 (never "-0.00": a probability of 1 is no surprise at all)."""
    value = float(bits)
    return f"{value if value > 0 else 0.0:.2f}"


def fmt_count(n: float, word: str = "token") -> str:
    """'1 token' · '≈ 3 tokens' style counts: the word agrees with the number shown."""
    shown = f"{n:,.0f}"
    return f"{shown} {word}" if shown == "1" else f"{shown} {word}s"


def fmt_prob(p: float | None) -> str:
    """12.3% · 0.42% · 0.0031% · 0 — enough digits to tell small probabilities apart."""
    if p is None:
        return "–"
    if p <= 0:
        return "0"
    pct = p * 100
    if pct >= 10:
        return f"{pct:.1f}%"
    if pct >= 0.1:
        return f"{pct:.2f}%"
    return f"{pct:.2g}%"


def code_label(label: str) -> str:
    """A token label as inline code inside Markdown (escaped; backticks can't end the span)."""
    return f"<code>{html.escape(label)}</code>"


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=plot_escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14))
    fig.update_layout(height=220, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=10, r=10, t=10, b=10))
    return fig


# ----------------------------------------------------------------------------- next-token bars


def bar_label(row: dict, drawn: bool = False) -> str:
    label = f"{row['rank']}. {plot_escape(row['token'])}"
    if drawn:
        return f"<b>{label} ◀ drawn</b>"
    if not row["kept"]:
        return f"<span style='color:{FILTERED_TEXT}'><s>{label}</s></span>"
    return label


def bars_figure(data: dict) -> go.Figure:
    """Horizontal bars for each row of :meth:`Distribution.as_dict`: the model's probability (light)
    and the probability after the settings (dark); filtered tokens greyed and struck through.
    Built from plain dicts without plotly's per-property validation (5x faster on every slider move)."""
    rows = data["rows"]
    if not rows:
        return empty_figure("No tokens to show")
    drawn = (data.get("drawn") or {}).get("id")  # a generation's step: the token that was drawn, marked
    labels = [bar_label(r, r["id"] == drawn) for r in rows]
    raw = [r["raw_prob"] for r in rows]
    after = [r["prob"] for r in rows]
    custom = [[plot_escape(r["token"]), r["id"], fmt_prob(r["raw_prob"]), fmt_prob(r["prob"]),
               f"rank {r['rank_after']} after the settings" if r["kept"] else "filtered out by the settings"]
              for r in rows]
    hover = ("<b>%{customdata[0]}</b> (id %{customdata[1]})<br>model: %{customdata[2]}<br>"
             "after the settings: %{customdata[3]}<br>%{customdata[4]}<extra></extra>")
    greedy = data.get("greedy")
    common = dict(type="bar", y=labels, orientation="h", textposition="outside", cliponaxis=False,
                  customdata=custom, hovertemplate=hover)
    traces = [
        dict(common, x=raw, name="the model's probability",
             marker=dict(color=[RAW_COLOR if r["kept"] else RAW_FILTERED_COLOR for r in rows]),
             text=[fmt_prob(p) for p in raw], textfont=dict(size=11, color="#555")),
        dict(common, x=after, marker=dict(color=[DRAWN_COLOR if r["id"] == drawn else AFTER_COLOR for r in rows]),
             textfont=dict(size=11),
             name="after the penalties (greedy takes the top one)" if greedy else "after the sampling settings",
             text=[fmt_prob(r["prob"]) if r["kept"] else "✕ filtered" for r in rows]),
    ]
    top = max(max(raw), max(after), 1e-9)
    layout = dict(
        barmode="group", bargap=0.25, bargroupgap=0.05, height=max(320, 100 + 26 * len(rows)),
        margin=dict(l=10, r=30, t=60, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0),
        xaxis=dict(title=dict(text="probability of being the next token"), range=[0, top * 1.25], tickformat=".0%",
                   rangemode="tozero", zeroline=True, fixedrange=True),
        yaxis=dict(autorange="reversed", tickfont=dict(family=MONO, size=13), fixedrange=True, type="category"),
        hoverlabel=dict(font=dict(family=MONO)),
    )
    return go.Figure(dict(data=traces, layout=layout), _validate=False)


# ----------------------------------------------------------------------------- surprise timeline

TIMELINE_NOTE = ("**Surprise timeline.** One point per generated token: how surprised the model was by its own "
                 "pick (red, −log₂ of the probability it had: 0 bits = a sure thing, each extra bit = half as likely) "
                 "and how uncertain it was before picking (grey, the entropy of the distribution it drew from). "
                 "Peaks are where the model was surprised by its own pick. Click a point to open that token.")


def timeline_figure(record: dict | None, selected: int | None = None) -> go.Figure:
    """Surprisal of each drawn token and the entropy of the distribution it came from (after the
    sampling settings), in bits, one point per generated token; ``selected`` gets a vertical line."""
    tokens = (record or {}).get("tokens") or []
    if not tokens:
        return empty_figure("Generate some text: each token's surprise will appear here")
    x = list(range(1, len(tokens) + 1))
    surprisal = [min(float(t.get("surprisal_bits", 0.0)), 99.0) for t in tokens]
    entropy = [float(t.get("entropy_bits", 0.0)) for t in tokens]
    custom = [[plot_escape(t.get("label", "")), fmt_prob(float(t.get("prob", 0.0))), s, e, i]
              for i, (t, s, e) in enumerate(zip(tokens, surprisal, entropy))]
    hover = ("token #%{x} <b>%{customdata[0]}</b><br>probability %{customdata[1]}<br>"
             "surprisal %{customdata[2]:.2f} bits<br>entropy %{customdata[3]:.2f} bits<extra></extra>")
    traces = [
        dict(type="scatter", mode="lines+markers", x=x, y=surprisal, name="surprisal of the drawn token",
             line=dict(color=DRAWN_COLOR, width=1.5), marker=dict(size=7), customdata=custom, hovertemplate=hover),
        dict(type="scatter", mode="lines", x=x, y=entropy, name="entropy of its distribution",
             line=dict(color=ENTROPY_COLOR, width=1.5, dash="dot"), customdata=custom, hovertemplate=hover),
    ]
    shapes = []
    if selected is not None and 0 <= selected < len(tokens):
        shapes.append(dict(type="line", x0=selected + 1, x1=selected + 1, y0=0, y1=1, yref="paper",
                           line=dict(color="#1f5fa8", width=2)))
    layout = dict(
        height=280, margin=dict(l=10, r=10, t=40, b=45), hovermode="closest", shapes=shapes,
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0),
        xaxis=dict(title=dict(text="generated token (1 = first)"), range=[0.5, len(tokens) + 0.5],
                   tickformat="d", fixedrange=True),
        yaxis=dict(title=dict(text="bits"), rangemode="tozero", fixedrange=True),
    )
    return go.Figure(dict(data=traces, layout=layout), _validate=False)


# ----------------------------------------------------------------------------- logit lens



def lens_figure(data: dict) -> go.Figure:
    """Heatmap: one row per layer (embeddings at the bottom), one column per position; each cell shows
    the most likely next token read from that layer, coloured by its probability."""
    layers, tokens = data["layers"], data["input_tokens"]
    if not tokens:
        return empty_figure("No tokens")
    x = [f"{p}: {plot_escape(shorten(t, 10))}" for p, t in zip(data["positions"], tokens)]
    text = [[plot_escape(shorten(t, 8)) for t in row] for row in data["top_tokens"]]
    nexts = data["next_tokens"]
    custom = []
    for li, layer in enumerate(layers):
        row = []
        for pi, tok in enumerate(tokens):
            alts = "<br>".join(f"{plot_escape(lab)}: {fmt_prob(p)}" for lab, p in data["alternatives"][li][pi])
            actual = (f"actually followed by {plot_escape(nexts[pi])}" if nexts[pi] is not None
                      else "the next token is unknown yet")
            row.append([plot_escape(layer), plot_escape(tok), alts, actual,
                        fmt_prob(data["final_probs_of_top"][li][pi])])
        custom.append(row)
    trace = dict(
        type="heatmap", z=data["top_probs"], x=x, y=layers, text=text, texttemplate="%{text}",
        textfont=dict(family=MONO, size=11), zmin=0, zmax=1, colorscale=SEQUENTIAL, customdata=custom, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="probability<br>of the top<br>token", side="top"), tickformat=".0%", len=0.9),
        hovertemplate=("%{customdata[0]}, after <b>%{customdata[1]}</b><br>top predictions:<br>%{customdata[2]}"
                       "<br>%{customdata[3]}<br>final layer's top token here: %{customdata[4]}<extra></extra>"),
    )
    nl = len(layers)
    layout = dict(
        height=max(260, 110 + (34 if nl <= 13 else 20) * nl), margin=dict(l=10, r=10, t=30, b=90),
        xaxis=dict(title=dict(text="position: input token (each column predicts the token after it)"), tickangle=-45,
                   tickfont=dict(family=MONO, size=11), type="category", fixedrange=True),
        yaxis=dict(title=dict(text="read from"), fixedrange=True, type="category"),
    )
    return go.Figure(dict(data=[trace], layout=layout), _validate=False)


# ----------------------------------------------------------------------------- probability-coloured text


TOKEN_VIEW_CSS = """
.tokview { white-space: pre-wrap; word-break: break-word; line-height: 1.9; font-size: 1.02rem;
           padding: 10px 12px; border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px; }
.tokview .prompt { opacity: 0.6; }
.tokview .tok { color: #1a1a1a; border-radius: 3px; padding: 1px 0; position: relative; cursor: pointer;
                box-shadow: inset -1px 0 0 rgba(0,0,0,0.12); }
.tokview .tok:hover, .tokview .tok:focus { outline: 2px solid #1f5fa8; outline-offset: 0; z-index: 5; }
.tokview .tok.sel { outline: 3px solid #d62728; outline-offset: 0; }
.tokview .tip { display: none; position: absolute; left: 0; top: 1.7em; z-index: 20; min-width: 13em;
                background: #222; color: #f5f5f5; padding: 6px 8px; border-radius: 6px; font-size: 0.82rem;
                line-height: 1.45; white-space: pre; font-family: ui-monospace, Menlo, Consolas, monospace;
                box-shadow: 0 2px 8px rgba(0,0,0,0.3); pointer-events: none; }
.tokview .tok:hover .tip, .tokview .tok:focus .tip { display: block; }
.toklegend { font-size: 0.85rem; margin-top: 6px; display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.toklegend span.sw { color: #1a1a1a; padding: 1px 7px; border-radius: 3px; }
"""

# Clicks (and Enter on a focused token) select a position: its step opens, and branching starts there.
# A click on a point of the surprise timeline (plotly's own click event on that figure) selects its token too.
TOKEN_VIEW_JS = """
const pick = (el) => { if (el) trigger('token_click', {pos: parseInt(el.dataset.pos)}); };
element.addEventListener('click', (e) => pick(e.target.closest('[data-pos]')));
element.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' || e.key === ' ') {
    const el = e.target.closest('[data-pos]');
    if (el) { e.preventDefault(); pick(el); }
  }
});
const bindTimeline = () => {
  const gd = document.querySelector('#surprise-timeline .js-plotly-plot');
  if (!gd || !gd.on || gd.__pickBound) return;
  gd.__pickBound = true;
  gd.on('plotly_click', (ev) => {
    const pt = ev && ev.points && ev.points[0];
    if (pt && Number.isInteger(pt.pointIndex)) trigger('token_click', {pos: pt.pointIndex});
  });
};
new MutationObserver(bindTimeline).observe(document.body, {childList: true, subtree: true});
bindTimeline();
"""


def prob_color(p: float) -> str:
    for lo, color, _ in PROB_BINS:
        if p >= lo:
            return color
    return PROB_BINS[-1][1]


def legend_html() -> str:
    sw = "".join(f"<span class='sw' style='background:{c}'>{html.escape(lab)}</span>" for _, c, lab in PROB_BINS)
    return f"<div class='toklegend'><span>Probability the token had when it was drawn:</span>{sw}</div>"


def _visible_piece(tok: dict) -> str:
    """The token's text as shown in the flow of the text: its own text, a visible ↵ before a line
    break, its byte label when it is only part of a character."""
    text = tok.get("text", "")
    if "\ufffd" in text or not text:
        return tok.get("label", "")
    if "\n" in text:
        return text.replace("\n", "↵\n")
    return text


def token_view_html(record: dict | None, selected: int | None = None, max_prompt_chars: int = 600) -> str:
    """The prompt (faded) then each generated token on a background coloured by its probability; a
    hover (or keyboard focus) shows the top alternatives; ``selected`` is outlined."""
    if not record or not record.get("tokens"):
        return ("<div class='tokview'><span class='prompt'>Generate some text: each new token will appear here "
                "coloured by how likely it was.</span></div>")
    prompt = str(record.get("prompt", ""))
    if len(prompt) > max_prompt_chars:
        prompt = "…" + prompt[-max_prompt_chars:]
    parts = [f"<div class='tokview'><span class='prompt'>{html.escape(prompt)}</span>"]
    for i, tok in enumerate(record["tokens"]):
        p = float(tok.get("prob", 0.0))
        lines = [f"#{i + 1} {tok.get('label', '')}   p = {fmt_prob(p)}", "alternatives:"]
        for alt in tok.get("alternatives", []):
            mark = "  ← drawn" if alt.get("id") == tok.get("id") else ""
            lines.append(f"  {alt.get('label', ''):<14} {fmt_prob(alt.get('prob', 0.0)):>7}{mark}")
        lines.append("click to branch from here")
        tip = html.escape("\n".join(lines))
        cls = "tok sel" if selected == i else "tok"
        parts.append(f"<span class='{cls}' data-pos='{i}' tabindex='0' style='background:{prob_color(p)}'>"
                     f"{html.escape(_visible_piece(tok))}<span class='tip'>{tip}</span></span>")
    parts.append("</div>")
    parts.append(legend_html())
    return "".join(parts)


# ----------------------------------------------------------------------------- the Next-token tab in words


def format_summary(data: dict, context_length: int) -> str:
    ml = data["most_likely"]
    eb, ea = data["entropy_before_bits"], data["entropy_after_bits"]
    lines = [
        f"**Next token after** {code_label(data['last_token'])} · {data['context_tokens']} tokens of context · "
        f"model *{html.escape(data['model'])}*",
        f"**{'Greedy picks' if data['greedy'] else 'Most likely'}:** {code_label(ml['token'])} — "
        f"{fmt_prob(ml['raw_prob'])} for the model, {fmt_prob(ml['prob'])} after the settings.",
        f"**{data['survivors']:,} of {data['vocab_size']:,} tokens** can still be drawn · **entropy** "
        f"{fmt_bits(eb)} → {fmt_bits(ea)} bits (as uncertain as a fair pick among ≈ {2 ** eb:,.0f} → "
        f"{fmt_count(2 ** ea)})",
    ]
    if data["truncated_tokens"]:
        lines.append(f"⚠️ The text is longer than the model's context window ({context_length} tokens): the model "
                     f"sees only the last {data['context_tokens']}; the first {data['truncated_tokens']:,} tokens "
                     "were dropped.")
    return "\n\n".join(lines)


def format_note(data: dict, repeated_tokens: int) -> str:
    """What each setting did to the bars, in plain language and with this text's numbers."""
    s = data["settings"]
    filters = data["filters"]
    out = []
    before = data["vocab_size"]
    for f in filters:
        name, v, left = f["name"], f["value"], f["survivors"]
        if name == "repetition penalty":
            out.append(f"**Repetition penalty ×{v:g}:** the {repeated_tokens} different tokens already in the text "
                       f"were made {'less' if v > 1 else 'more'} likely (their dark bar is "
                       f"{'shorter' if v > 1 else 'longer'} than it would be).")
        elif name == "no-repeat n-gram":
            out.append(f"**No-repeat {int(v)}-grams:** {before - left} token(s) banned because they would repeat a "
                       f"{int(v)}-token sequence already in the text.")
        elif name == "temperature":
            if v < 1:
                out.append(f"**Temperature {v:g} (below 1)** sharpens the distribution: tall bars grow, short bars "
                           "shrink — safer, more predictable text.")
            else:
                out.append(f"**Temperature {v:g} (above 1)** flattens the distribution: short bars grow, tall bars "
                           "shrink — more surprising text, and more mistakes.")
        elif name == "top-k":
            out.append(f"**Top-k {int(v)}** keeps only the {int(v)} most likely tokens: {left:,} left.")
        elif name == "top-p":
            out.append(f"**Top-p {v:g}** keeps the most likely tokens until their probabilities add up to "
                       f"{v:.0%}: here that is {left:,} token(s).")
        elif name == "min-p":
            out.append(f"**Min-p {v:g}** drops tokens less than {v:.0%} as likely as the top token: {left:,} left.")
        before = left
    if data["greedy"]:
        out.insert(0, "**Sampling is off (greedy):** the model always takes the top dark bar, so temperature, "
                      "top-k, top-p and min-p play no part; only the penalties apply.")
    else:
        off = []
        if s["temperature"] == 1.0:
            off.append("temperature 1 (no change)")
        if s["top_k"] == 0:
            off.append("top-k 0")
        if s["top_p"] >= 1.0:
            off.append("top-p 1")
        if s["min_p"] == 0:
            off.append("min-p 0")
        if off:
            out.append("Off: " + ", ".join(off) + ".")
        out.append(f"Then the sampler draws one of the **{data['survivors']:,}** remaining tokens, each with the "
                   "probability of its dark bar; the same seed repeats the same draw.")
    if not filters and data["greedy"]:
        out.append("No penalty is set: the dark bars equal the light ones.")
    return "\n\n".join("• " + line for line in out)


def format_lookup(results: list[dict]) -> str:
    if not results:
        return ""
    lines = []
    for r in results:
        status = (f"rank {r['rank_after']} after the settings" if r["kept"] else "**filtered out** by the settings")
        line = (f"{code_label(r['query_label'])}: rank **{r['rank']:,}** for the model · "
                f"{fmt_prob(r['raw_prob'])} for the model · {fmt_prob(r['prob'])} after the settings "
                f"({status})")
        if r["n_tokens"] > 1:
            pieces = " ".join(code_label(p) for p in r["pieces"])
            line += (f"<br>&nbsp;&nbsp;it is {r['n_tokens']} tokens ({pieces}): the numbers are for its first token "
                     f"{code_label(r['token'])}")
        lines.append(line)
    return "\n\n".join(lines) + "\n\nIt is now in the *choose a token* list, ready to append."


def table_rows(data: dict) -> list[list]:
    return [[r["rank"], r["token"], r["id"], fmt_prob(r["raw_prob"]), fmt_prob(r["prob"]),
             "kept" if r["kept"] else "filtered", r["rank_after"] if r["kept"] else "–"] for r in data["rows"]]


def choice_label(r: dict) -> str:
    kept = "" if r["kept"] else "  (filtered)"
    return f"{r['rank']}. {r['token']}   {fmt_prob(r['raw_prob'])} → {fmt_prob(r['prob'])}{kept}"
