"""Draw a checkpoint's training curves (train and validation loss, and bits per byte) as a PNG.

    python -m models.plot_training models/my-gpt/training_log.jsonl models/my-gpt/loss_curve.png \
        --bytes-per-token 3.6

Several logs are stages of one model (pretrain, then training continued from its checkpoint): they are
drawn one after the other on the same token axis, with a line where each later stage starts.

Needs plotly and kaleido (kaleido renders with a local Chrome/Chromium).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load_history(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run may log a step twice: keep the last
    return [by_step[s] for s in sorted(by_step)]


def chain(stages: list[list[dict]]) -> tuple[list[dict], list[float]]:
    """One history from stages that each count steps and tokens from 0, and the token counts (millions)
    where the later stages start."""
    history, starts, steps, tokens = [], [], 0, 0
    for i, stage in enumerate(stages):
        if i:
            starts.append(tokens / 1e6)
        history += [{**h, "step": h["step"] + steps, "tokens": h["tokens"] + tokens, "stage": i + 1} for h in stage]
        if stage:
            steps, tokens = history[-1]["step"], history[-1]["tokens"]
    return history, starts


def figure(history: list[dict], bytes_per_token: float | None, title: str, goal_bpb: float | None = None,
           stage_starts: list[float] = ()):
    """Loss curves against tokens seen. With ``bytes_per_token`` the right axis reads the same curves in
    bits per byte (nats / ln 2 / bytes per token), and ``goal_bpb`` draws that goal as a dashed line.
    ``stage_starts`` (millions of tokens) marks where continued training began."""
    import plotly.graph_objects as go

    tokens = [h["tokens"] / 1e6 for h in history]
    train = [h["train_loss"] for h in history]
    val = [h.get("val_loss") for h in history]
    fig = go.Figure()
    fig.add_scatter(x=tokens, y=train, name="train loss (smoothed)", mode="lines")
    fig.add_scatter(x=tokens, y=val, name="validation loss (held-out books)", mode="lines+markers")
    values = [v for v in train + val if v is not None]
    if bytes_per_token:
        to_nats = math.log(2) * bytes_per_token
        if goal_bpb:
            goal = goal_bpb * to_nats
            values.append(goal)
            fig.add_hline(y=goal, line=dict(dash="dash", color="grey"),
                          annotation_text=f"goal: {goal_bpb} bits per byte", annotation_position="bottom left")
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1)
        rng = [lo - pad, hi + pad]
        fig.update_layout(yaxis=dict(range=rng),
                          yaxis2=dict(title="bits per byte", overlaying="y", side="right", showgrid=False,
                                      tickmode="auto",
                                      range=[r / to_nats for r in rng]))
        # an invisible trace so the right axis is drawn; it reads the left axis's curves in bits per byte
        fig.add_scatter(x=tokens[:1], y=[rng[0] / to_nats], yaxis="y2", showlegend=False, hoverinfo="skip",
                        mode="markers", marker=dict(opacity=0))
    for i, x in enumerate(stage_starts):
        fig.add_vline(x=x, line=dict(dash="dot", color="grey"), annotation_text=f"stage {i + 2}: training continued",
                      annotation_position="top right")
    fig.update_layout(title=title, xaxis_title="training tokens seen (millions)",
                      yaxis_title="cross-entropy loss (nats per token)", template="plotly_white",
                      width=900, height=500, legend=dict(x=0.55, y=0.88))
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="log", help="training_log.jsonl (several: stages, in order)")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--bytes-per-token", type=float, default=None, help="to add a bits-per-byte axis")
    p.add_argument("--title", default="Training curves")
    p.add_argument("--goal-bpb", type=float, default=None, help="draw a goal in bits per byte")
    args = p.parse_args(argv)
    history, starts = chain([load_history(Path(log)) for log in args.logs])
    figure(history, args.bytes_per_token, args.title, args.goal_bpb, starts).write_image(args.out, scale=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
