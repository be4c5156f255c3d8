"""Attention weights of a text: one forward pass, a bounded cache, and the matrices the views show.

Plain data only (numpy arrays, lists, dicts): no Gradio, no plotting. :func:`get_attention` runs the
model once per (model, text) and caches the result, so switching layer, head or view never reruns
the model. Every function that takes a user value validates it and raises
:class:`~demo.errors.ValidationError` with a sentence meant for the person using the app.

Shapes: ``weights[layer, head, query, key]`` is how much the token at position ``query`` looks at
the token at position ``key`` (each row sums to 1; ``key > query`` is always 0 because a GPT only
looks back).
"""

from __future__ import annotations

import math
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from .backend import MAX_PROMPT_CHARS, clean_text
from .errors import ExplorerError, ValidationError
from .sampling import check_number
from .tokens import VISIBLE, display_tokens

# Hard cap on the tokens analysed, whatever the model's context window.
MAX_TOKENS = 1024
# Memory budget of one result: layers * heads * T * T float32 must fit, so big models analyse fewer tokens
# (GPT-2 small: 682 tokens; the bundled model: its whole 512-token context).
MAX_RESULT_BYTES = 256 * 2**20
# The cache keeps at most this many results and this many bytes of weights in all.
CACHE_ENTRIES = 4
CACHE_BYTES = 640 * 2**20

VIEWS = {
    "head": "One head",
    "heads": "All heads of a layer",
    "aggregate": "Average / strongest",
    "token": "One token",
}
AGGREGATES = {
    "mean-heads": "Average over the heads of this layer",
    "max-heads": "Strongest head of this layer (max)",
    "mean-layers": "Average over the layers (this head number)",
    "max-layers": "Strongest layer (max, this head number)",
    "mean-all": "Average over every layer and head",
    "max-all": "Strongest of every layer and head (max)",
}
SCOPES = {"layer": "Every head of this layer", "all": "Every head of every layer"}


class AttentionUnavailable(ExplorerError, RuntimeError):
    """The model returned no attention weights (e.g. loaded with sdpa/flash attention)."""


@dataclass(frozen=True, eq=False)
class AttentionResult:
    """The attention weights of one text under one model (read-only)."""

    model_name: str
    precision: str
    text: str  # the analysed text (after validation), possibly longer than what was analysed
    token_ids: tuple[int, ...]  # the analysed tokens (the first `n_tokens` of the text)
    tokens: tuple[str, ...]  # display labels: '␣the', '↵', '<0xC3>' for a piece of a multi-byte character
    weights: np.ndarray  # float32 [layers, heads, T, T], read-only
    total_tokens: int  # tokens in the whole text
    limit: int  # the most tokens this model may analyse (context window, MAX_TOKENS, memory budget)
    seconds: float  # time of the forward pass
    created: float = field(default_factory=time.time)

    @property
    def n_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.weights.shape[2])

    @property
    def truncated(self) -> int:
        """How many tokens at the end of the text were left out."""
        return self.total_tokens - self.n_tokens

    @property
    def nbytes(self) -> int:
        return int(self.weights.nbytes)

    def notice(self) -> str | None:
        if not self.truncated:
            return None
        return (f"The text has {self.total_tokens:,} tokens; this model can analyse at most {self.limit:,} at once, "
                f"so only the first {self.n_tokens:,} are shown ({self.truncated:,} left out).")


# ----------------------------------------------------------------------------- extraction


def token_limit(loaded) -> int:
    """The most tokens one analysis of this model may hold (context window, hard cap, memory budget)."""
    cfg = loaded.model.config
    layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 12))
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 12))
    by_memory = int(math.sqrt(MAX_RESULT_BYTES / (4 * max(1, layers * heads))))
    return max(1, min(loaded.context_length, MAX_TOKENS, by_memory))


def tokenize(loaded, text: str) -> list[int]:
    ids = loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if not ids:
        raise ValidationError("text is empty after tokenization: type some words")
    return list(ids)


def compute_attention(loaded, text) -> AttentionResult:
    """Run the model once on `text` (its first `token_limit` tokens) and return every layer's and head's
    attention weights. Works for any precision the backend loads (fp32, bf16, fp16, 8-bit, 4-bit) on
    CPU or GPU: the weights come back as float32 numpy on the CPU."""
    text = clean_text("text", text)
    ids = tokenize(loaded, text)
    limit = token_limit(loaded)
    kept = ids[:limit]
    model = loaded.model
    # The transformer body only: the LM head's logits ([T, vocab]) are not needed and can be large.
    body = getattr(model, "base_model", None) or model
    device = getattr(model, "device", torch.device("cpu"))
    input_ids = torch.tensor([kept], device=device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_attentions=True,
                   use_cache=False)
    atts = getattr(out, "attentions", None)
    if not atts or any(a is None for a in atts):
        raise AttentionUnavailable(
            f"'{loaded.name}' did not return its attention weights: it must be loaded with eager attention.")
    n_layers, (n_heads, t_q, t_k) = len(atts), tuple(atts[0].shape[1:])
    weights = np.empty((n_layers, n_heads, t_q, t_k), dtype=np.float32)
    for i, a in enumerate(atts):  # layer by layer: no second full-size copy on the device
        weights[i] = a[0].detach().to(torch.float32).cpu().numpy()
    del out, atts
    seconds = time.perf_counter() - t0
    weights.setflags(write=False)
    return AttentionResult(
        model_name=loaded.name, precision=loaded.precision, text=text, token_ids=tuple(kept),
        tokens=tuple(display_tokens(loaded.tokenizer, kept)), weights=weights, total_tokens=len(ids), limit=limit,
        seconds=seconds)


class AttentionCache:
    """LRU cache of :class:`AttentionResult` keyed by (model identity, precision, text), bounded in
    entries and bytes. Thread-safe; concurrent requests for the same key run the model once."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[weakref.ref, AttentionResult]] = OrderedDict()
        self._pending: dict[tuple, threading.Lock] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(loaded, text: str) -> tuple:
        return (id(loaded.model), loaded.name, loaded.precision, text)

    def _lookup(self, key, model) -> AttentionResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        ref, result = entry
        if ref() is not model:  # the model was replaced and its id reused: stale
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result

    def peek(self, loaded, text) -> AttentionResult | None:
        """The cached result, or None (never runs the model)."""
        if not isinstance(text, str):
            return None
        with self._lock:
            result = self._lookup(self.key(loaded, text), loaded.model)
            if result is not None:
                self.hits += 1
            return result

    def get(self, loaded, text, compute=compute_attention) -> AttentionResult:
        text = clean_text("text", text)
        key = self.key(loaded, text)
        with self._lock:
            result = self._lookup(key, loaded.model)
            if result is not None:
                self.hits += 1
                return result
            key_lock = self._pending.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                result = self._lookup(key, loaded.model)
                if result is not None:
                    self.hits += 1
                    return result
                self.misses += 1
            try:
                result = compute(loaded, text)
                with self._lock:
                    self._entries[key] = (weakref.ref(loaded.model), result)
                    self._evict()
            finally:
                with self._lock:
                    self._pending.pop(key, None)
        return result

    def _evict(self):
        for key in [k for k, (ref, _) in self._entries.items() if ref() is None]:
            del self._entries[key]
        while self._entries and (len(self._entries) > self.max_entries or self.nbytes > self.max_bytes):
            if len(self._entries) == 1:  # a single result is bounded by MAX_RESULT_BYTES already
                break
            self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for _, r in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self):
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


CACHE = AttentionCache()


def get_attention(loaded, text) -> AttentionResult:
    """The attention of `text` under the loaded model, from the cache when possible."""
    return CACHE.get(loaded, text)


# ----------------------------------------------------------------------------- validation


def check_layer(result: AttentionResult, layer) -> int:
    return check_number("layer", layer, 0, result.n_layers - 1, integer=True)


def check_head(result: AttentionResult, head) -> int:
    return check_number("head", head, 0, result.n_heads - 1, integer=True)


def check_token(result: AttentionResult, token) -> int:
    """A query position; None or -1 mean the last token."""
    if token is None or (not isinstance(token, bool) and isinstance(token, (int, float)) and token == -1):
        return result.n_tokens - 1
    return check_number("token", token, 0, result.n_tokens - 1, integer=True)


def _choice(name: str, value, options: dict[str, str], default: str | None = None) -> str:
    """Accept a key ('head') or its label ('One head'), case-insensitively."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be one of {', '.join(options)}, got {type(value).__name__}")
    v = value.strip().lower()
    for key, label in options.items():
        if v in (key, label.lower()):
            return key
    raise ValidationError(f"{name} must be one of {', '.join(options)}, got {value[:40]!r}")


def check_view(value) -> str:
    return _choice("view", value, VIEWS, default="head")


def check_aggregate(value) -> str:
    return _choice("aggregate", value, AGGREGATES, default="mean-heads")


def check_scope(value) -> str:
    return _choice("scope", value, SCOPES, default="layer")


# ----------------------------------------------------------------------------- matrices


def head_matrix(result: AttentionResult, layer: int, head: int) -> np.ndarray:
    """[T, T]: rows = the token doing the looking (query), columns = the token looked at (key)."""
    return result.weights[check_layer(result, layer), check_head(result, head)]


def layer_heads(result: AttentionResult, layer: int) -> np.ndarray:
    """[heads, T, T] for one layer."""
    return result.weights[check_layer(result, layer)]


def aggregate_matrix(result: AttentionResult, aggregate: str, layer: int = 0, head: int = 0) -> np.ndarray:
    """[T, T] mean or max over the heads of `layer`, over the layers (for head number `head`), or over all."""
    how, _, over = check_aggregate(aggregate).partition("-")
    w = result.weights
    if over == "heads":
        stack = w[check_layer(result, layer)]
    elif over == "layers":
        stack = w[:, check_head(result, head)]
    else:
        stack = w.reshape(-1, *w.shape[2:])
    out = stack.mean(axis=0, dtype=np.float64) if how == "mean" else stack.max(axis=0)
    return out.astype(np.float32)


def focus_matrix(result: AttentionResult, token, scope: str = "layer", layer: int = 0) -> tuple[np.ndarray, list[str]]:
    """Where the token at position `token` looks: [rows, token + 1] with one row per head of `layer`
    (scope 'layer') or per (layer, head) (scope 'all'), and the row labels."""
    q = check_token(result, token)
    if check_scope(scope) == "layer":
        lay = check_layer(result, layer)
        return result.weights[lay, :, q, : q + 1], [f"L{lay} H{h}" for h in range(result.n_heads)]
    rows = result.weights[:, :, q, : q + 1].reshape(-1, q + 1)
    return rows, [f"L{lay} H{h}" for lay in range(result.n_layers) for h in range(result.n_heads)]


def pool_causal(m: np.ndarray, block: int) -> np.ndarray:
    """Shrink [..., T, T] causal matrices by `block`: each cell is the attention a query of the block
    pays to the keys of the block (summed over the keys, averaged over the queries), so rows still sum
    to 1. Blocks wholly above the diagonal are NaN (nothing there: a GPT only looks back)."""
    if block <= 1:
        return np.asarray(m, dtype=np.float32)
    t = m.shape[-1]
    n = -(-t // block)
    pad = n * block - t
    widths = [(0, 0)] * (m.ndim - 2) + [(0, pad), (0, pad)]
    mp = np.pad(np.nan_to_num(np.asarray(m, dtype=np.float64)), widths)
    s = mp.reshape(*m.shape[:-2], n, block, n, block).sum(axis=(-3, -1))
    counts = np.minimum(block, t - np.arange(n) * block).astype(np.float64)
    pooled = s / counts[:, None]
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    pooled[..., upper] = np.nan
    return pooled.astype(np.float32)


def block_ranges(n_tokens: int, block: int) -> list[tuple[int, int]]:
    """[(first, last)] token positions of each block (inclusive)."""
    return [(a, min(a + block, n_tokens) - 1) for a in range(0, n_tokens, block)]


def block_size(n_tokens: int, cap: int) -> int:
    """Tokens per block so that at most `cap` blocks show `n_tokens` tokens."""
    return max(1, -(-n_tokens // cap))


# ----------------------------------------------------------------------------- labels and export


_BYTE = re.compile(r"<0x([0-9A-F]{2})>")
_INVISIBLE = {v: k for k, v in VISIBLE.items()}


def labels_to_text(labels) -> str:
    """Undo the display labels: '␣' -> ' ', '↵' -> newline, '<0xC3><0xA9>' -> 'é'."""
    out = bytearray()
    for label in labels:
        pos = 0
        for m in _BYTE.finditer(label):
            out += "".join(_INVISIBLE.get(c, c) for c in label[pos:m.start()]).encode("utf-8")
            out.append(int(m.group(1), 16))
            pos = m.end()
        out += "".join(_INVISIBLE.get(c, c) for c in label[pos:]).encode("utf-8")
    return out.decode("utf-8", errors="replace")


def axis_labels(tokens, max_chars: int = 14) -> list[str]:
    """Unique labels for plot axes: the display token and its position, e.g. '␣the (5)'."""
    out = []
    for i, t in enumerate(tokens):
        t = t if len(t) <= max_chars else t[: max_chars - 1] + "…"
        out.append(f"{t} ({i})")
    return out


def matrix_payload(result: AttentionResult, layer: int, head: int, decimals: int = 6) -> dict:
    """JSON-able data of one head: tokens and the [T, T] weight matrix (rounded)."""
    layer, head = check_layer(result, layer), check_head(result, head)
    return {
        "model": result.model_name,
        "precision": result.precision,
        "layer": layer,
        "head": head,
        "n_layers": result.n_layers,
        "n_heads": result.n_heads,
        "tokens": list(result.tokens),
        "token_ids": list(result.token_ids),
        "total_tokens": result.total_tokens,
        "truncated_tokens": result.truncated,
        "weights": np.round(result.weights[layer, head].astype(np.float64), decimals).tolist(),
    }


def matrix_csv(matrix: np.ndarray, row_labels, col_labels, corner: str = "query \\ key") -> str:
    """A matrix as CSV with labelled rows and columns (blank cells where there is nothing: NaN)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([corner, *col_labels])
    for label, row in zip(row_labels, np.asarray(matrix, dtype=np.float64)):
        w.writerow([label, *("" if math.isnan(v) else f"{v:.6g}" for v in row)])
    return buf.getvalue()


__all__ = [
    "AGGREGATES", "CACHE", "MAX_PROMPT_CHARS", "MAX_TOKENS", "SCOPES", "VIEWS", "AttentionCache", "AttentionResult",
    "AttentionUnavailable", "aggregate_matrix", "axis_labels", "block_ranges", "block_size", "check_aggregate",
    "check_head", "check_layer", "check_scope", "check_token", "check_view", "compute_attention", "focus_matrix",
    "get_attention", "head_matrix", "labels_to_text", "layer_heads", "matrix_csv", "matrix_payload", "pool_causal",
    "token_limit",
]
