"""A generation in words: the stats line under the streamed text, and a generated token's step (what it
was drawn from, how surprising it was, where the model looked)."""

from __future__ import annotations

from demo.analysis import token_step as steps
from demo.analysis.attention import AttentionResult
from demo.plots.next_token import code_label, fmt_bits, fmt_count, fmt_prob
from demo.runtime.generation import GenerationRecord, GenerationUpdate


def format_stats(u: GenerationUpdate) -> str:
    """The stats line: first-token time, decode speed, tokens, seed, and how the generation ended."""
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
        line += (f"\n\n⚠️ The model's context window holds the prompt and the new tokens together, and they did "
                 f"not fit: the first {u.truncated_tokens} tokens of the prompt were dropped and the model read the "
                 f"last {u.prompt_tokens}. Lower *Max new tokens* to keep more of the prompt.")
    return line


def format_step(data: dict, record: GenerationRecord, attention: AttentionResult | None) -> str:
    """The selected step in words: the drawn token, its probability and surprise, the uncertainty it
    came from, and which token's attention row shows where the model looked."""
    k, d = data["step"], data["drawn"]
    eb, ea = data["entropy_before_bits"], data["entropy_after_bits"]
    kept = ("the only token the settings left" if d["kept"] and data["survivors"] == 1
            else f"rank {d['rank_after']} of the {data['survivors']:,} tokens the settings left" if d["kept"]
            else "**filtered out** by the settings")
    lines = [
        f"**Token #{k + 1}** {code_label(d['token'])} was drawn with probability **{fmt_prob(d['prob'])}** after the "
        f"sampling settings ({kept}); the model alone gave it {fmt_prob(d['raw_prob'])} (rank {d['rank']:,} of "
        f"{data['vocab_size']:,}).",
        f"**Surprisal** {fmt_bits(data['surprisal_bits'])} bits · **entropy** of the distribution it came from "
        f"{fmt_bits(ea)} bits after the settings, {fmt_bits(eb)} bits for the model alone (as uncertain as a fair "
        f"pick among ≈ {fmt_count(2 ** ea)}).",
    ]
    if attention is not None:
        q = steps.step_query(record, k)
        lines.append(f"**Where it looked:** the attention of {code_label(attention.tokens[q])} (token {q}), the last "
                     "token the model had read, in every head of every layer.")
    return "\n\n".join(lines)
