"""Sampling settings: validation, presets, and the transformers logits processors that apply them.

Generation and the next-token view both build their processors with :func:`build_processors`, so
the bars a student sees are exactly the distribution the sampler draws from. Token choice itself is
done by :class:`TokenChooser`, the last processor, with a per-request ``torch.Generator``: a seed
then reproduces the same text even while other requests sample concurrently (``generate``'s own
sampling uses the global RNG, which concurrent requests share).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

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

from .errors import ValidationError

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    lo_open: bool = False


# Server-side limits (the sliders show a friendlier subset; the API may send anything).
LIMITS = {
    # Lower bounds keep logits / value finite in fp32 (1e-40 would overflow to inf and sampling to NaN).
    "temperature": Range(0.01, 5.0),
    "top_k": Range(0, 100_000),
    "top_p": Range(0.0, 1.0, lo_open=True),
    "min_p": Range(0.0, 1.0),
    "repetition_penalty": Range(0.01, 10.0),
    "no_repeat_ngram_size": Range(0, 20),
}


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. Defaults are the 'balanced' preset."""

    do_sample: bool = True
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 0
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SamplingParams] = {
    "Greedy": SamplingParams(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                             repetition_penalty=1.0, no_repeat_ngram_size=3),
    "Balanced": SamplingParams(),
    "Creative": SamplingParams(temperature=1.1, top_k=0, top_p=0.98, min_p=0.02, repetition_penalty=1.05),
    "Focused": SamplingParams(temperature=0.6, top_k=40, top_p=0.9, min_p=0.0, repetition_penalty=1.15),
}


# ----------------------------------------------------------------------------- validation


def _number(name: str, value, integer: bool) -> float | int:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValidationError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except (ValueError, OverflowError):
            raise ValidationError(f"{name} must be a number, got {value[:40]!r}") from None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int like 10**400
        raise ValidationError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number, got {value}")
    if integer:
        if value != int(value):
            raise ValidationError(f"{name} must be a whole number, got {value}")
        return int(value)
    return value


def check_number(name: str, value, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    """Coerce an API value to a finite int/float within [lo, hi] (or (lo, hi]) or raise ValidationError."""
    v = _number(name, value, integer)
    if v < lo or v > hi or (lo_open and v == lo):
        bracket = "(" if lo_open else "["
        raise ValidationError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {v:g}")
    return v


def check_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValidationError(f"{name} must be true or false, got {str(value)[:40]!r}")


def check_seed(value) -> int | None:
    """None, '' or -1 mean 'pick a random seed'."""
    if value is None or value == "" or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == -1):
        return None
    return check_number("seed", value, 0, MAX_SEED, integer=True)


def validate_sampling(*, do_sample=True, temperature=0.8, top_k=0, top_p=0.95, min_p=0.0, repetition_penalty=1.1,
                      no_repeat_ngram_size=0, seed=None) -> SamplingParams:
    def lim(name, value, integer=False):
        r = LIMITS[name]
        return check_number(name, value, r.lo, r.hi, integer=integer, lo_open=r.lo_open)

    return SamplingParams(
        do_sample=check_bool("do_sample", do_sample),
        temperature=lim("temperature", temperature),
        top_k=lim("top_k", top_k, integer=True),
        top_p=lim("top_p", top_p),
        min_p=lim("min_p", min_p),
        repetition_penalty=lim("repetition_penalty", repetition_penalty),
        no_repeat_ngram_size=lim("no_repeat_ngram_size", no_repeat_ngram_size, integer=True),
        seed=check_seed(seed),
    )


def resolve_seed(params: SamplingParams) -> SamplingParams:
    """Give a request without a seed a random one, so the stats line can show how to reproduce it."""
    if params.seed is not None:
        return params
    return SamplingParams(**{**params.as_dict(), "seed": random.randint(0, MAX_SEED)})


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


@dataclass
class ChosenToken:
    token_id: int
    prob: float  # probability the token had in the distribution it was drawn from (after the filters)
    alternatives: list[tuple[int, float]] = field(default_factory=list)  # top (id, prob) of that distribution


class TokenChooser(LogitsProcessor):
    """Last processor of a generation: picks the next token itself (argmax, or a draw from its own
    seeded generator) and returns scores that make it the only choice, so ``generate`` runs greedy
    and the seed alone decides the text. Records each choice with its probability and alternatives."""

    def __init__(self, do_sample: bool, seed: int | None, top_n: int = 5):
        self.do_sample, self.seed, self.top_n = do_sample, seed, top_n
        self.generator: torch.Generator | None = None
        self.chosen: list[ChosenToken] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != 1:
            raise ValueError("TokenChooser supports batch size 1")
        probs = torch.softmax(scores.float(), dim=-1)
        if self.do_sample:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device)
                self.generator.manual_seed(self.seed if self.seed is not None else random.randint(0, MAX_SEED))
            choice = torch.multinomial(probs, 1, generator=self.generator)
        else:
            choice = probs.argmax(dim=-1, keepdim=True)
        top = torch.topk(probs[0], k=min(self.top_n, probs.shape[-1]))
        self.chosen.append(ChosenToken(
            token_id=int(choice), prob=float(probs[0, choice]),
            alternatives=[(int(i), float(p)) for i, p in zip(top.indices.tolist(), top.values.tolist())],
        ))
        forced = torch.full_like(scores, -math.inf)
        return forced.scatter_(1, choice, 0.0)
