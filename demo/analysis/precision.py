"""The cost of 8 bits: one text through the same checkpoint in two precisions, compared token by token.

Plain data only (numpy arrays, lists, dicts): no Gradio, no plotting. :func:`compare_precisions` runs
each model once on the text (its first tokens, as many as both may analyse) and measures how far the
second model (``other``, typically int8) strays from the first (``reference``, fp32/bf16/fp16):

* per position t, about the prediction of the token *after* position t (every position of the text,
  the last one included):

  - ``kl_bits[t]`` = KL(P_ref || P_other) = sum_v P_ref(v) (log P_ref(v) - log P_other(v)) / ln 2: the
    bits lost, on average, coding the reference model's next token with the other model's
    distribution. 0 when the two agree exactly; computed from ``log_softmax`` in float64, so it is
    never negative except by rounding (clipped to 0).
  - ``top1_ref[t]``, ``top1_other[t]``: each model's most likely next token (argmax of its logits),
    and ``agree[t]`` whether they are the same (greedy decoding would pick the same token).
  - ``top_overlap[t]`` = |top-n(ref) ∩ top-n(other)| / n: how much of the reference's shortlist of
    the n most likely tokens the other model keeps (1 = the same n tokens, in any order).
  - ``entropy_ref_bits[t]``: how uncertain the reference is there (a small KL on a flat distribution
    matters less than on a confident one).

* per layer: ``attn_max_diff[layer]`` = the largest |A_ref - A_other| over every head, query and key,
  and ``attn_mean_diff[layer]`` = the mean |A_ref - A_other| over the causal entries (key <= query; the
  others are 0 in both models), in units of attention weight (each row of A sums to 1).

:func:`comparison_of` goes through the app's :class:`~demo.core.cache.ModelCache`, so redrawing or
exporting never reruns either model; :meth:`PrecisionComparison.as_dict` is the JSON of the API and
the input of :mod:`demo.plots.precision`; :func:`summary_line` says it in one sentence.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from demo.analysis.attention import AttentionUnavailable, token_limit
from demo.analysis.next_token import MAX_TOP_N
from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.tokens import display_tokens
from demo.core.validation import check_number, check_text, encode_text
from demo.runtime.loading import LoadedModel

DEFAULT_TOP_N = 10
LN2 = math.log(2.0)
# Positions whose float64 distributions are worked on at once: bounds the temporaries to
# CHUNK x vocab x 8 bytes a piece (128 positions of GPT-2's 50,257 tokens: 51 MB).
CHUNK = 128


@dataclass(frozen=True, eq=False)
class PrecisionComparison:
    """One text under the same checkpoint in two precisions (read-only). Arrays are per position
    ([T]) or per layer ([L]); see the module docstring for what each number means."""

    model_name: str
    reference_precision: str
    other_precision: str
    text: str  # the analysed text (after validation), possibly longer than what was analysed
    token_ids: tuple[int, ...]  # the analysed tokens (the first `n_positions` of the text)
    tokens: tuple[str, ...]  # display labels; position t predicts the token after tokens[t]
    total_tokens: int  # tokens in the whole text
    limit: int  # the most tokens both models may analyse
    top_n: int  # n of the top-n overlap (at most the vocabulary)
    kl_bits: np.ndarray  # float64 [T], >= 0
    entropy_ref_bits: np.ndarray  # float64 [T]
    top1_ref: np.ndarray  # int64 [T]
    top1_other: np.ndarray  # int64 [T]
    top1_ref_tokens: tuple[str, ...]
    top1_other_tokens: tuple[str, ...]
    top_overlap: np.ndarray  # float64 [T] in [0, 1]
    attn_max_diff: np.ndarray  # float64 [L]
    attn_mean_diff: np.ndarray  # float64 [L]
    reference_memory_bytes: int
    other_memory_bytes: int
    reference_seconds: float  # time of each model's forward pass
    other_seconds: float
    created: float = field(default_factory=time.time)

    @property
    def agree(self) -> np.ndarray:
        """bool [T]: both models' most likely next token is the same."""
        return self.top1_ref == self.top1_other

    @property
    def n_positions(self) -> int:
        return int(self.kl_bits.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.attn_max_diff.shape[0])

    @property
    def n_disagree(self) -> int:
        """Positions where the top-1 token changed."""
        return int((~self.agree).sum())

    @property
    def mean_kl_bits(self) -> float:
        return float(self.kl_bits.mean())

    @property
    def max_kl_position(self) -> int:
        """The position of the largest KL (the first one on a tie)."""
        return int(self.kl_bits.argmax())

    @property
    def max_kl_bits(self) -> float:
        return float(self.kl_bits[self.max_kl_position])

    @property
    def mean_top_overlap(self) -> float:
        return float(self.top_overlap.mean())

    @property
    def next_tokens(self) -> list[str | None]:
        """The token that actually follows each position (None after the last analysed one)."""
        return [*self.tokens[1:], None]

    @property
    def truncated(self) -> int:
        """How many tokens at the end of the text were left out."""
        return self.total_tokens - self.n_positions

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (what the cache counts; the labels add about as much again)."""
        arrays = (self.kl_bits, self.entropy_ref_bits, self.top1_ref, self.top1_other, self.top_overlap,
                  self.attn_max_diff, self.attn_mean_diff)
        return int(sum(a.nbytes for a in arrays)) + 64 * self.n_positions

    def notice(self) -> str | None:
        if not self.truncated:
            return None
        return (f"The text has {self.total_tokens:,} tokens; these models can analyse at most {self.limit:,} at "
                f"once, so only the first {self.n_positions:,} are compared ({self.truncated:,} left out).")

    def as_dict(self) -> dict:
        """JSON-able: floats to 6 significant digits, per-position and per-layer values as lists."""
        pos = self.max_kl_position
        return {
            "model": self.model_name,
            "reference_precision": self.reference_precision,
            "other_precision": self.other_precision,
            "top_n": self.top_n,
            "n_positions": self.n_positions,
            "n_layers": self.n_layers,
            "total_tokens": self.total_tokens,
            "limit": self.limit,
            "truncated_tokens": self.truncated,
            "notice": self.notice(),
            "n_disagree": self.n_disagree,
            "mean_kl_bits": _sig(self.mean_kl_bits),
            "max_kl_bits": _sig(self.max_kl_bits),
            "max_kl_position": pos,
            "max_kl_after": self.tokens[pos],
            "mean_top_overlap": _sig(self.mean_top_overlap),
            "reference_memory_mb": _sig(self.reference_memory_bytes / 2**20),
            "other_memory_mb": _sig(self.other_memory_bytes / 2**20),
            "reference_seconds": _sig(self.reference_seconds),
            "other_seconds": _sig(self.other_seconds),
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "next_tokens": self.next_tokens,
            "kl_bits": _sig_list(self.kl_bits),
            "entropy_ref_bits": _sig_list(self.entropy_ref_bits),
            "top1_ref": self.top1_ref.tolist(),
            "top1_other": self.top1_other.tolist(),
            "top1_ref_tokens": list(self.top1_ref_tokens),
            "top1_other_tokens": list(self.top1_other_tokens),
            "agree": self.agree.tolist(),
            "top_overlap": _sig_list(self.top_overlap),
            "attn_max_diff": _sig_list(self.attn_max_diff),
            "attn_mean_diff": _sig_list(self.attn_mean_diff),
        }


def _sig(x: float, digits: int = 6) -> float:
    """A float rounded to ``digits`` significant digits (0.000123456789 -> 0.000123457)."""
    return float(f"{float(x):.{digits}g}")


def _sig_list(a: np.ndarray, digits: int = 6) -> list[float]:
    return [_sig(x, digits) for x in np.asarray(a, dtype=np.float64).tolist()]


# ----------------------------------------------------------------------------- checks


def check_same_checkpoint(reference, other, text: str) -> None:
    """ValidationError unless the two models can be compared token by token: the same catalogue name,
    tokenizers that give the same ids for this text, and the same vocabulary, layers and heads."""
    if reference.name != other.name:
        raise ValidationError(f"Only two precisions of the same model can be compared: '{reference.name}' and "
                              f"'{other.name}' are different checkpoints.")
    ref_ids = encode_text(reference.tokenizer, text).ids
    other_ids = encode_text(other.tokenizer, text).ids
    if ref_ids != other_ids:
        raise ValidationError(f"The two copies of '{reference.name}' tokenize this text differently "
                              f"({len(ref_ids):,} and {len(other_ids):,} tokens): they cannot be compared.")
    shapes = [(m.vocab_size, (m.n_layers, m.n_heads)) for m in (reference, other)]
    if shapes[0] != shapes[1]:
        raise ValidationError(f"The two copies of '{reference.name}' differ in shape (vocabulary, layers, heads: "
                              f"{shapes[0]} and {shapes[1]}): they cannot be compared.")


# ----------------------------------------------------------------------------- the forward passes


def _forward(loaded: LoadedModel, ids: list[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], float]:
    """One forward pass: (logits float32 [T, vocab] on the CPU, every layer's attention [1, H, T, T]
    as the model returned it (its device and dtype), seconds)."""
    model = loaded.model
    device = getattr(model, "device", torch.device("cpu"))
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_attentions=True,
                    use_cache=False)
        logits = out.logits[0].detach().to(device="cpu", dtype=torch.float32)  # the copy waits for a GPU
    seconds = time.perf_counter() - t0
    atts = getattr(out, "attentions", None)
    if not atts or any(a is None for a in atts):
        raise AttentionUnavailable(
            f"'{loaded.name}' ({loaded.precision}) did not return its attention weights: it must be loaded with "
            "eager attention.")
    return logits, tuple(atts), seconds


def _position_stats(ref: torch.Tensor, other: torch.Tensor, top_n: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kl_bits, entropy_ref_bits, top1_ref, top1_other, top_overlap) from two [T, vocab] float32 logits."""
    kl, ent, overlap = [], [], []
    for a in range(0, ref.shape[0], CHUNK):
        lr = torch.log_softmax(ref[a:a + CHUNK].double(), dim=-1)
        lo = torch.log_softmax(other[a:a + CHUNK].double(), dim=-1)
        p = lr.exp()
        # p * (log p - log q), with 0 where p is 0 (log p may then be -inf: 0 * inf would be NaN)
        terms = torch.where(p > 0, p * (lr - lo), torch.zeros_like(p))
        kl.append((terms.sum(dim=-1) / LN2).clamp_min(0.0))  # a tiny negative is rounding: KL >= 0
        ent.append(torch.where(p > 0, -p * lr, torch.zeros_like(p)).sum(dim=-1) / LN2)
        top_r = torch.topk(ref[a:a + CHUNK], top_n, dim=-1).indices
        top_o = torch.topk(other[a:a + CHUNK], top_n, dim=-1).indices
        shared = (top_r[:, :, None] == top_o[:, None, :]).any(dim=-1).sum(dim=-1)  # ids are unique per row
        overlap.append(shared.double() / top_n)
        del lr, lo, p, terms
    return (torch.cat(kl).numpy(), torch.cat(ent).numpy(), ref.argmax(dim=-1).numpy().astype(np.int64),
            other.argmax(dim=-1).numpy().astype(np.int64), torch.cat(overlap).numpy())


def _causal_mean(diff: torch.Tensor) -> float:
    """Mean of [H, T, T] over the entries with key <= query (the lower triangle, diagonal included)."""
    t = diff.shape[-1]
    mask = torch.ones(t, t, dtype=torch.bool, device=diff.device).tril()
    return float(diff[:, mask].double().mean())


def compare_precisions(reference, other, text: str, top_n: int = DEFAULT_TOP_N) -> PrecisionComparison:
    """Run ``reference`` and ``other`` (two precisions of the same checkpoint, on any devices) once each
    on the first tokens of ``text`` (as many as both may analyse, see :func:`demo.analysis.attention.token_limit`)
    and compare their predictions and attention weights. ValidationError for a bad text or top_n, or two
    models that are not the same checkpoint; AttentionUnavailable if a model hides its attention."""
    text = check_text("text", text)
    top_n = check_number("top_n", top_n, 1, MAX_TOP_N, integer=True)
    check_same_checkpoint(reference, other, text)
    limit = min(token_limit(reference), token_limit(other))
    enc = encode_text(reference.tokenizer, text, limit=limit, keep="first")
    ids = list(enc.ids)
    top_n = min(top_n, reference.vocab_size)

    logits_ref, atts_ref, seconds_ref = _forward(reference, ids)
    # The reference's attention, kept on the CPU in float32 while the other model runs (at most the
    # memory budget of one attention result, MAX_RESULT_BYTES).
    ref_layers = [a[0].to(device="cpu", dtype=torch.float32) for a in atts_ref]
    del atts_ref
    logits_other, atts_other, seconds_other = _forward(other, ids)
    max_diff, mean_diff = [], []
    for a_ref, a_other in zip(ref_layers, atts_other):  # layer by layer: one [H, T, T] difference at a time
        diff = (a_ref - a_other[0].to(device="cpu", dtype=torch.float32)).abs()
        max_diff.append(float(diff.max()))
        mean_diff.append(_causal_mean(diff))
    del ref_layers, atts_other

    kl, ent, top1_ref, top1_other, overlap = _position_stats(logits_ref, logits_other, top_n)
    arrays: dict[str, Any] = dict(kl_bits=kl, entropy_ref_bits=ent, top1_ref=top1_ref, top1_other=top1_other,
                                  top_overlap=overlap, attn_max_diff=np.array(max_diff, dtype=np.float64),
                                  attn_mean_diff=np.array(mean_diff, dtype=np.float64))
    for a in arrays.values():
        a.setflags(write=False)
    return PrecisionComparison(
        model_name=reference.name, reference_precision=reference.precision, other_precision=other.precision,
        text=text, token_ids=tuple(ids), tokens=tuple(display_tokens(reference.tokenizer, ids)),
        total_tokens=enc.total, limit=limit, top_n=top_n,
        top1_ref_tokens=tuple(display_tokens(reference.tokenizer, top1_ref.tolist())),
        top1_other_tokens=tuple(display_tokens(reference.tokenizer, top1_other.tolist())),
        reference_memory_bytes=reference.memory_bytes, other_memory_bytes=other.memory_bytes,
        reference_seconds=seconds_ref, other_seconds=seconds_other, **arrays)


# ----------------------------------------------------------------------------- through the cache


_serials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_serial_counter = itertools.count(1)
_serial_lock = threading.Lock()


def model_serial(model) -> int:
    """A number for this model object, never given to another one in this process (unlike ``id()``,
    which a new model may inherit from a freed one)."""
    with _serial_lock:
        serial = _serials.get(model)
        if serial is None:
            serial = _serials[model] = next(_serial_counter)
        return serial


Compare = Callable[..., PrecisionComparison]  # (reference, other, text, top_n) -> comparison


def comparison_of(reference, other, text: str, cache: ModelCache | None = None, top_n: int = DEFAULT_TOP_N,
                  compute: Compare = compare_precisions) -> PrecisionComparison:
    """The comparison of ``other`` with ``reference`` on a text: from ``cache`` when it holds it, else
    one forward pass of each (``compute``: where it runs, e.g. a ZeroGPU worker), stored in ``cache``."""
    text = check_text("text", text)
    top_n = check_number("top_n", top_n, 1, MAX_TOP_N, integer=True)
    if cache is None:
        return compute(reference, other, text, top_n)
    # The cache keys on the reference model (its object, guarded by a weak reference, its name and
    # precision); the other model goes into the request. Its precision alone would not do: when it is
    # unloaded and loaded again (the pool evicts models) the new copy must not be served the old
    # comparison; nor would id(other.model), which a new model may inherit from a freed one. A serial
    # number per model object changes with every load. The stored comparison holds only numbers, never
    # the model, so caching it does not keep an evicted model in memory; the old entry just ages out.
    request = (other.name, other.precision, model_serial(other.model), text, top_n)
    return cache.get("precision-compare", reference, request, lambda: compute(reference, other, text, top_n))


# ----------------------------------------------------------------------------- in words


def _bits(x: float) -> str:
    """0.004 · 0.0912 · 1.2e-05 · 0 — three significant digits."""
    return "0" if x == 0 else f"{x:.3g}"


def _percent(x: float) -> str:
    """A share as a percentage that says 100 % only when it is exactly 1."""
    return "100 %" if x >= 1 else f"{min(100 * x, 99.9):.1f} %"


def summary_line(cmp: PrecisionComparison | dict) -> str:
    """One plain-text sentence (a comparison or its :meth:`~PrecisionComparison.as_dict`), e.g. 'int8 vs
    fp32 (gutenberg-gpt): the top choice changed at 3 of 120 positions; mean KL 0.004 bits (largest
    0.09 bits, after ␣the); top-10 overlap 97.2 %.'"""
    d = cmp.as_dict() if isinstance(cmp, PrecisionComparison) else cmp
    n = d["n_positions"]
    where = "position" if n == 1 else "positions"
    line = (f"{d['other_precision']} vs {d['reference_precision']} ({d['model']}): the top choice changed at "
            f"{d['n_disagree']} of {n} {where}; mean KL {_bits(d['mean_kl_bits'])} bits (largest "
            f"{_bits(d['max_kl_bits'])} bits, after {d['max_kl_after']}); top-{d['top_n']} overlap "
            f"{_percent(d['mean_top_overlap'])}.")
    if d.get("truncated_tokens"):
        line += f" Only the first {n:,} of the text's {d['total_tokens']:,} tokens were compared."
    return line


def compared_precisions(device: str) -> tuple[str, str]:
    """(reference, 8-bit) precisions of the comparison on this device: full fp32 on CPU, 16-bit on a GPU
    (what the 8-bit model computes in there), and bitsandbytes' int8 on both."""
    return ("fp16" if device == "cuda" else "fp32"), "int8"
