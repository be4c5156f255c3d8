"""Draw a checkpoint's training curves (train and validation loss, and bits per byte) as a PNG.

    python -m models.plot_training models/gutenberg-gpt/training_log.jsonl models/gutenberg-gpt/loss_curve.png \
        --bytes-per-token 3.64

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


def figure(history: list[dict], bytes_per_token: float | None, title: str):
    import plotly.graph_objects as go

    tokens = [h["tokens"] / 1e6 for h in history]
    fig = go.Figure()
    fig.add_scatter(x=tokens, y=[h["train_loss"] for h in history], name="train loss (smoothed)", mode="lines")
    fig.add_scatter(x=tokens, y=[h.get("val_loss") for h in history], name="validation loss (held-out books)",
                    mode="lines+markers")
    if bytes_per_token:
        fig.add_scatter(x=tokens, y=[h["val_loss"] / math.log(2) / bytes_per_token for h in history if "val_loss" in h],
                        name="validation bits per byte", mode="lines", yaxis="y2", line=dict(dash="dot"))
        fig.update_layout(yaxis2=dict(title="bits per byte", overlaying="y", side="right", rangemode="tozero"))
    fig.update_layout(title=title, xaxis_title="training tokens seen (millions)",
                      yaxis_title="cross-entropy loss (nats per token)", template="plotly_white",
                      width=900, height=500, legend=dict(x=0.45, y=0.95))
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="training_log.jsonl")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--bytes-per-token", type=float, default=None, help="to add a bits-per-byte axis")
    p.add_argument("--title", default="Training curves")
    args = p.parse_args(argv)
    figure(load_history(Path(args.log)), args.bytes_per_token, args.title).write_image(args.out, scale=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
