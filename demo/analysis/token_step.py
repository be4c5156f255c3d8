"""One step of a finished generation, in every view: the distribution a token was drawn from and
where the model looked when it drew it. Plain data only (no Gradio, no plotting).

A generation's record (:func:`demo.runtime.generation.generation_record`) keeps the exact token ids: the
prompt as the model read it and each drawn token. Step ``k`` (0 = the first generated token) is the
moment the model had read the prompt and the first ``k`` generated tokens and drew token ``k``:

- its distribution is the next-token distribution after those ids, under the generation's own
  sampling settings (so the drawn token's probability is the one the coloured output shows);
- its attention is the row of the token read last (position ``len(prompt) + k - 1``): where the
  model looked to produce token ``k``. A GPT only looks back, so one forward pass over the whole
  generation holds every step's row; it is computed once and cached under the generation's text,
  where the Attention tab finds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from demo.analysis import next_token as nt
from demo.analysis.attention import AttentionResult, AttentionView, compute_attention
from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.sampling import validate_sampling
from demo.core.validation import check_index
from demo.runtime.generation import GenerationRecord, check_record, check_record_model
from demo.runtime.loading import LoadedModel

AttentionCompute = Callable[..., AttentionResult]  # (loaded, text, exact ids) -> the attention


def _ids(values) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in values):
        raise ValidationError("that generation's record is damaged: generate again")
    return list(values)


def check_step(loaded: LoadedModel, record, step) -> tuple[GenerationRecord, int]:
    """(record, step) checked: a record with tokens, made by the loaded model, and a step within it."""
    record = check_record(record)
    check_record_model(loaded, record)
    return record, check_index("token", step, len(record["tokens"]))


def prompt_ids(record: GenerationRecord) -> list[int]:
    return _ids(record.get("prompt_ids", []))


def generated_ids(record: GenerationRecord) -> list[int]:
    return _ids([t.get("id") for t in record["tokens"]])


def step_context(record: GenerationRecord, step: int) -> list[int]:
    """The ids the model had read when it drew token ``step``."""
    return prompt_ids(record) + generated_ids(record)[:step]


def generation_text(loaded: LoadedModel, record: GenerationRecord) -> str:
    """The whole generation (prompt as read, then every drawn token) as text, exactly."""
    return loaded.decode(prompt_ids(record) + generated_ids(record))


def step_query(record: GenerationRecord, step: int) -> int:
    """Position of the token read last before token ``step`` was drawn (its attention row)."""
    return len(prompt_ids(record)) + step - 1


def step_distribution(loaded: LoadedModel, record: GenerationRecord, step: int, top_n: int = 20,
                      cache: ModelCache | None = None, forward: nt.Forward = nt.forward_last_logits) -> dict:
    """The next-token data of step ``step`` (as :meth:`Distribution.as_dict`) under the generation's
    settings, with ``drawn``: the row of the token that was drawn (added to ``rows`` when it is not among
    the top ``top_n``), and what the generation recorded of it."""
    settings = {k: v for k, v in dict(record.get("settings") or {}).items() if k != "max_new_tokens"}
    params = validate_sampling(**settings)
    ids = step_context(record, step)
    if not ids:
        raise ValidationError("that generation has no prompt tokens to start from")
    dist = nt.distribution(loaded, ids, params, cache, forward)
    data = dist.as_dict(loaded, top_n)
    tok = record["tokens"][step]
    drawn = dist.row(loaded, tok["id"]).as_dict()
    if all(r["id"] != drawn["id"] for r in data["rows"]):
        data["rows"].append(drawn)
    p = drawn["prob"]
    data.update(
        step=step, drawn=drawn, recorded_prob=float(tok.get("prob", p)),
        surprisal_bits=-math.log2(p) if p > 0 else math.inf,
    )
    return data


def generation_attention(loaded: LoadedModel, record: GenerationRecord, cache: ModelCache | None = None,
                         compute: AttentionCompute = compute_attention) -> AttentionResult:
    """The attention of the whole generation (its exact ids), cached under its text: opened in the
    Attention tab, that text needs no second forward pass. A text can re-tokenize differently (two
    newline tokens read back as one): a cached result of other tokens is replaced, never used."""
    ids = prompt_ids(record) + generated_ids(record)
    text = generation_text(loaded, record)
    if cache is None:
        return compute(loaded, text, ids)
    return cache.get("attention", loaded, text, lambda: compute(loaded, text, ids),
                     accept=lambda result: list(result.token_ids) == ids[:result.limit])


def step_view(result: AttentionResult, record: GenerationRecord, step: int) -> AttentionView:
    """The Attention tab's 'One token' view (every head of every layer) of step ``step``'s row."""
    q = step_query(record, step)
    if q < 0:
        raise ValidationError("that generation has no prompt tokens to start from")
    if q >= result.n_tokens:
        raise ValidationError(f"token #{step + 1} comes after the first {result.n_tokens} tokens, the most this "
                              "model's attention can be shown for")
    return AttentionView(kind="token", token=q, scope="all")
