"""Sampling settings: their one definition, the presets, and the transformers logits processors that
apply them.

Generation and the next-token view both build their processors with :func:`build_processors`, so
the bars a student sees are exactly the distribution the sampler draws from. Token choice itself is
done by :class:`TokenChooser`, the last processor, with a per-request ``torch.Generator``: a seed
then reproduces the same text even while other requests sample concurrently (``generate``'s own
sampling uses the global RNG, which concurrent requests share).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from demo.core.errors import ValidationError
from demo.core.validation import MAX_SEED, Setting


def _setting(default, **spec) -> Any:
    """A SamplingParams field that carries its :class:`~demo.core.validation.Setting` definition."""
    return field(default=default, metadata={"setting": spec})


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen: the one definition of every sampling setting (name, default,
    the range the server accepts, the page's slider range and help text). Defaults are the
    'Balanced' preset. Lower bounds keep logits / value finite in fp32 (1e-40 would overflow)."""

    do_sample: bool = _setting(True, kind="bool", label="Sample (off = greedy: always the most likely token)",
                               help="Off: always take the most likely token (temperature, top-k, top-p, min-p "
                                    "then play no part)")
    temperature: float = _setting(0.8, kind="float", lo=0.01, hi=5.0, slider=(0.05, 2.0, 0.05), label="Temperature",
                                  help="Below 1 sharpens the distribution, above 1 flattens it")
    top_k: int = _setting(0, kind="int", lo=0, hi=100_000, slider=(0, 200, 1), label="Top-k",
                          help="Keep only the k most likely tokens (0 = off)")
    top_p: float = _setting(0.95, kind="float", lo=0.0, hi=1.0, lo_open=True, slider=(0.05, 1.0, 0.01),
                            label="Top-p (nucleus)",
                            help="Keep the smallest set of likely tokens whose probabilities add up to p")
    min_p: float = _setting(0.0, kind="float", lo=0.0, hi=1.0, slider=(0.0, 0.5, 0.01), label="Min-p",
                            help="Drop tokens less likely than min-p × the top token's probability (0 = off)")
    repetition_penalty: float = _setting(1.1, kind="float", lo=0.01, hi=10.0, slider=(1.0, 2.0, 0.05),
                                         label="Repetition penalty",
                                         help="Above 1 discourages tokens already in the text")
    no_repeat_ngram_size: int = _setting(0, kind="int", lo=0, hi=20, slider=(0, 10, 1), label="No-repeat n-gram size",
                                         help="Forbid repeating any run of n tokens (0 = off)")
    seed: int | None = _setting(None, kind="seed", label="Seed",
                                help="-1 = random; the same seed and settings give the same text")

    def as_dict(self) -> dict:
        return asdict(self)

    def values(self) -> list:
        """The values in :data:`SETTINGS` order."""
        return [getattr(self, s.name) for s in SETTINGS]


SETTINGS: tuple[Setting, ...] = tuple(Setting(name=f.name, default=f.default, **f.metadata["setting"])
                                      for f in fields(SamplingParams))
SETTING = {s.name: s for s in SETTINGS}
NAMES: tuple[str, ...] = tuple(SETTING)
# How many new tokens to generate: a generation setting beside the sampling ones.
MAX_NEW_TOKENS = Setting("max_new_tokens", label="Max new tokens", help="How many tokens to add at most", kind="int",
                         default=80, lo=1, hi=1024, slider=(1, 512, 1))

PRESETS: dict[str, SamplingParams] = {
    "Greedy": SamplingParams(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                             repetition_penalty=1.0, no_repeat_ngram_size=3),
    "Balanced": SamplingParams(),
    "Creative": SamplingParams(temperature=1.1, top_k=0, top_p=0.98, min_p=0.02, repetition_penalty=1.05),
    "Focused": SamplingParams(temperature=0.6, top_k=40, top_p=0.9, min_p=0.0, repetition_penalty=1.15),
}
DEFAULT_PRESET = "Balanced"


def validate_sampling(*, slider: bool = False, **values) -> SamplingParams:
    """SamplingParams from request values (missing ones take their default); every value checked,
    within the sliders' ranges with ``slider``."""
    unknown = set(values) - set(SETTING)
    if unknown:
        raise ValidationError(f"unknown sampling setting(s): {', '.join(sorted(unknown))[:80]}")
    return SamplingParams(**{s.name: s.check(values.get(s.name, s.default), slider=slider) for s in SETTINGS})


def resolve_seed(params: SamplingParams) -> SamplingParams:
    """Give a request without a seed a random one, so the stats line can show how to reproduce it."""
    if params.seed is not None:
        return params
    return replace(params, seed=random.randint(0, MAX_SEED))


# ----------------------------------------------------------------------------- processors


def build_processors(params: SamplingParams) -> LogitsProcessorList:
    """transformers' own processors, in the order ``generate`` applies them: penalties first, then
    (when sampling) temperature, top-k, top-p, min-p. Neutral settings add no processor."""
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=params.repetition_penalty))
    if params.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size))
    if params.do_sample:
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            procs.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=params.top_p))
        if params.min_p > 0.0:
            procs.append(MinPLogitsWarper(min_p=params.min_p))
    return procs


def entropy_bits(probs: torch.Tensor) -> float:
    """Shannon entropy in bits (0 · log 0 = 0) of one distribution."""
    return row_entropy_bits(probs.unsqueeze(0))[0]


def row_entropy_bits(probs: torch.Tensor) -> list[float]:
    """The entropy in bits of each row of ``probs`` ([rows, vocab]); a zero probability adds nothing
    (its 0 · log 0 is NaN here, which ``nansum`` skips). Single precision: within 1e-6 bits of a double
    precision sum, and a quarter of the time of ``torch.special.entr`` (the decode loop computes it for
    every token)."""
    p = probs.float()
    return (-(p * p.log2()).nansum(dim=-1)).tolist()


@dataclass
class ChosenToken:
    token_id: int
    prob: float  # probability the token had in the distribution it was drawn from (after the filters)
    alternatives: list[tuple[int, float]] = field(default_factory=list)  # top (id, prob > 0) of that distribution
    entropy_bits: float = 0.0  # entropy of that distribution: how uncertain the pick was

    @property
    def surprisal_bits(self) -> float:
        """-log2 of the drawn token's probability: 0 for a sure pick, 1 more bit for each halving."""
        return -math.log2(self.prob) if self.prob > 0 else math.inf


class TokenChooser(LogitsProcessor):
    """Last processor of a generation: picks the next token itself (argmax, or a draw from its own
    seeded generator) and returns scores that make it the only choice, so ``generate`` runs greedy
    and the seed alone decides the text. Records each choice with its probability and alternatives."""

    def __init__(self, do_sample: bool, seed: int | None, top_n: int = 5, rng_state: torch.Tensor | None = None):
        self.do_sample, self.seed, self.top_n = do_sample, seed, top_n
        self.generator: torch.Generator | None = None
        self.rng_state = rng_state  # where an earlier part of the same generation left the generator
        self.chosen: list[ChosenToken] = []

    def state(self) -> torch.Tensor | None:
        """The generator's state, to continue the same draws in another call (or process)."""
        return self.generator.get_state() if self.generator is not None else self.rng_state

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """A draw from one row of probabilities ([1, vocab]) with this generation's own seeded generator
        (made at the first draw)."""
        if self.generator is None:
            self.generator = torch.Generator(device=probs.device)
            if self.rng_state is not None:
                self.generator.set_state(self.rng_state)
            else:
                self.generator.manual_seed(self.seed if self.seed is not None else random.randint(0, MAX_SEED))
        return torch.multinomial(probs, 1, generator=self.generator)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if scores.shape[0] != 1:
            raise ValueError("TokenChooser supports batch size 1 (choose_tokens picks for many rows)")
        chosen = choose_tokens(scores, [self])[0]
        forced = torch.full_like(scores, -math.inf)
        forced[0, chosen.token_id] = 0.0
        return forced


def pick_tokens(scores: torch.Tensor, choosers: list[TokenChooser]) -> tuple[list[int], torch.Tensor | None]:
    """Row ``i``'s next token (``scores``: [rows, vocab], the processors already applied), picked by
    ``choosers[i]``: the highest score (greedy, as ``generate`` picks), or a draw from the softmax with
    the chooser's own generator; and that softmax of every row when a row was drawn (None when all are
    greedy: no softmax was needed). Nothing is recorded: :func:`describe_tokens` does that."""
    if not any(c.do_sample for c in choosers):
        return scores.argmax(dim=-1).tolist(), None
    probs = torch.softmax(scores.float(), dim=-1)
    picks = [c.draw(probs[i:i + 1]) if c.do_sample else scores[i:i + 1].argmax(dim=-1, keepdim=True)
             for i, c in enumerate(choosers)]
    return torch.cat(picks)[:, 0].tolist(), probs


def describe_tokens(probs: torch.Tensor, picks: list[int], choosers: list[TokenChooser]) -> list[ChosenToken]:
    """The record of each picked token (row ``i`` of ``probs``, [rows, vocab], picked ``picks[i]``):
    its probability, the top alternatives and the entropy of its distribution, appended to
    ``choosers[i].chosen`` in row order (a chooser may have several rows: its tokens in order). All rows
    are computed together, and a row's figures do not depend on the others: the decode loop describes
    the tokens of several passes at once, which costs about what one pass's would."""
    top = torch.topk(probs, k=min(max(c.top_n for c in choosers), probs.shape[-1]), dim=-1)
    index = torch.tensor(picks, dtype=torch.long, device=probs.device)[:, None]
    picked = probs.gather(1, index)[:, 0].tolist()
    top_ids, top_probs, entropies = top.indices.tolist(), top.values.tolist(), row_entropy_bits(probs)
    out = []
    for i, c in enumerate(choosers):
        chosen = ChosenToken(token_id=picks[i], prob=picked[i], entropy_bits=entropies[i],
                             alternatives=[(t, q) for t, q in zip(top_ids[i][:c.top_n], top_probs[i][:c.top_n])
                                           if q > 0])  # the tokens the settings left (none more at 100 %)
        c.chosen.append(chosen)
        out.append(chosen)
    return out


def choose_tokens(scores: torch.Tensor, choosers: list[TokenChooser]) -> list[ChosenToken]:
    """Row ``i`` of ``scores`` ([rows, vocab], the processors already applied) picked by
    ``choosers[i]``, each with its own generator, and recorded in that chooser's ``chosen``: a row gets
    the same pick and record alone or among others."""
    picks, probs = pick_tokens(scores, choosers)
    return describe_tokens(torch.softmax(scores.float(), dim=-1) if probs is None else probs, picks, choosers)
