"""Attention weights of a text: one forward pass, the views of it, and the matrix each view shows.

Plain data only (numpy arrays, lists, dicts): no Gradio, no plotting. :func:`attention_of` runs the
model once per (model, text) through the app's :class:`~demo.core.cache.ModelCache`, so switching layer,
head or view never reruns the model. A view is an :class:`AttentionView`, validated once against
the result by :meth:`AttentionView.parse`; :func:`view_matrix` turns (result, view) into the numbers
that the figure, the caption, the API payload and the exports all show.

Shapes: ``weights[layer, head, query, key]`` is how much the token at position ``query`` looks at
the token at position ``key`` (each row sums to 1; ``key > query`` is always 0 because a GPT only
looks back). A result keeps only the rows' first ``query + 1`` weights when every later one is
exactly 0, which is half the memory and loses nothing (:class:`AttentionResult`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from demo.core.attention_views import AGGREGATES, SCOPES, VIEWS
from demo.core.cache import ModelCache
from demo.core.errors import ExplorerError, ValidationError
from demo.core.exports import csv_text
from demo.core.tokens import VISIBLE, display_tokens
from demo.core.validation import check_choice, check_index, check_position, encode_text
from demo.runtime.loading import LoadedModel

# Hard cap on the tokens analysed, whatever the model's context window.
MAX_TOKENS = 1024
# Memory budget of one result: layers * heads * T * T float32 must fit, so big models analyse fewer tokens
# (GPT-2 small: 682 tokens; the bundled model: its whole 512-token context).
MAX_RESULT_BYTES = 256 * 2**20



class AttentionUnavailable(ExplorerError, RuntimeError):
    """The model returned no attention weights (e.g. loaded with sdpa/flash attention)."""


def pack_causal(m: np.ndarray) -> np.ndarray | None:
    """[..., T, T] matrices as [..., T(T+1)/2]: row ``q``'s first ``q + 1`` weights, row after row; None
    when a weight after the diagonal is not exactly 0 (then packing would lose it)."""
    t = m.shape[-1]
    if np.triu(m, 1).any():
        return None
    out = np.empty((*m.shape[:-2], t * (t + 1) // 2), dtype=np.float32)
    for q in range(t):
        out[..., q * (q + 1) // 2: (q + 1) * (q + 2) // 2] = m[..., q, : q + 1]
    return out


def unpack_causal(packed: np.ndarray, t: int) -> np.ndarray:
    """The [..., T, T] matrices of :func:`pack_causal`'s [..., T(T+1)/2] (0 after the diagonal)."""
    out = np.zeros((*packed.shape[:-1], t, t), dtype=np.float32)
    for q in range(t):
        out[..., q, : q + 1] = packed[..., q * (q + 1) // 2: (q + 1) * (q + 2) // 2]
    return out


@dataclass(frozen=True, eq=False)
class AttentionResult:
    """The attention weights of one text under one model (read-only).

    ``stored`` is given as float32 [layers, heads, T, T] and kept packed (:func:`pack_causal`, half the
    memory, exact) when every weight after the diagonal is 0, as a GPT's are. Read it through the
    accessors (:meth:`head`, :meth:`layer`, :meth:`across_layers`, :meth:`rows`), which unpack only
    what they return; :attr:`weights` is the whole [layers, heads, T, T] array, made on each call."""

    model_name: str
    precision: str
    text: str  # the analysed text (after validation), possibly longer than what was analysed
    token_ids: tuple[int, ...]  # the analysed tokens (the first `n_tokens` of the text)
    tokens: tuple[str, ...]  # display labels: '␣the', '↵', '<0xC3>' for a piece of a multi-byte character
    stored: np.ndarray  # float32 [layers, heads, T, T] as given; packed [layers, heads, T(T+1)/2] once made
    total_tokens: int  # tokens in the whole text
    limit: int  # the most tokens this model may analyse (context window, MAX_TOKENS, memory budget)
    seconds: float  # time of the forward pass
    created: float = field(default_factory=time.time)
    n_tokens: int = field(init=False)

    def __post_init__(self):
        stored = self.stored
        if stored.ndim == 4:
            n_tokens = int(stored.shape[-1])
            packed = pack_causal(stored)
            stored = packed if packed is not None else np.asarray(stored, dtype=np.float32)
        else:  # already packed
            n_tokens = (math.isqrt(8 * int(stored.shape[-1]) + 1) - 1) // 2
        stored.setflags(write=False)
        object.__setattr__(self, "stored", stored)
        object.__setattr__(self, "n_tokens", n_tokens)

    @property
    def packed(self) -> bool:
        """Whether the weights are kept packed ([layers, heads, T(T+1)/2])."""
        return self.stored.ndim == 3

    def _full(self, part: np.ndarray) -> np.ndarray:
        return unpack_causal(part, self.n_tokens) if self.packed else part

    def head(self, layer: int, head: int) -> np.ndarray:
        """[T, T] of one head."""
        return self._full(self.stored[layer, head])

    def layer(self, layer: int) -> np.ndarray:
        """[heads, T, T] of one layer."""
        return self._full(self.stored[layer])

    def across_layers(self, head: int) -> np.ndarray:
        """[layers, T, T] of head number ``head`` in every layer."""
        return self._full(self.stored[:, head])

    def rows(self, q: int) -> np.ndarray:
        """[layers, heads, q + 1]: where the token at position ``q`` looks, in every head (read-only)."""
        if self.packed:
            return self.stored[..., q * (q + 1) // 2: (q + 1) * (q + 2) // 2]
        return self.stored[:, :, q, : q + 1]

    @property
    def weights(self) -> np.ndarray:
        """[layers, heads, T, T], every weight (a new array each time: use the accessors for parts)."""
        return self._full(self.stored)

    @property
    def n_layers(self) -> int:
        return int(self.stored.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.stored.shape[1])

    @property
    def truncated(self) -> int:
        """How many tokens at the end of the text were left out."""
        return self.total_tokens - self.n_tokens

    @property
    def nbytes(self) -> int:
        return int(self.stored.nbytes)

    def notice(self) -> str | None:
        if not self.truncated:
            return None
        return (f"The text has {self.total_tokens:,} tokens; this model can analyse at most {self.limit:,} at once, "
                f"so only the first {self.n_tokens:,} are shown ({self.truncated:,} left out).")


# ----------------------------------------------------------------------------- extraction


def token_limit(loaded: LoadedModel) -> int:
    """The most tokens one analysis of this model may hold (context window, hard cap, memory budget)."""
    layers, heads = loaded.n_layers, loaded.n_heads
    by_memory = int(math.sqrt(MAX_RESULT_BYTES / (4 * max(1, layers * heads))))
    return max(1, min(loaded.context_length, MAX_TOKENS, by_memory))


def compute_attention(loaded: LoadedModel, text, ids: Sequence[int] | None = None) -> AttentionResult:
    """Run the model once on a (valid) text, its first `token_limit` tokens, and return every layer's and
    head's attention weights. Works for any precision the backend loads (fp32, bf16, fp16, 8-bit, 4-bit) on
    CPU or GPU: the weights come back as float32 numpy on the CPU. ``ids``: the exact tokens that spell
    ``text`` where they are known (a generation's tokens, which need not be how the text re-tokenizes)."""
    limit = token_limit(loaded)
    if ids is None:
        enc = encode_text(loaded.tokenizer, text, limit=limit, keep="first")
        kept, total = list(enc.ids), enc.total
    else:
        kept, total = [int(i) for i in ids[:limit]], len(ids)
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
    # layer by layer (no second full-size copy on the device), packed where nothing is lost
    layers = [a[0].detach().to(torch.float32).cpu().numpy() for a in atts]
    del out, atts
    packed = [p for p in (pack_causal(m) for m in layers) if p is not None]
    weights = np.stack(packed if len(packed) == len(layers) else layers)
    del layers, packed
    seconds = time.perf_counter() - t0
    return AttentionResult(
        model_name=loaded.name, precision=loaded.precision, text=text, token_ids=tuple(kept),
        tokens=tuple(display_tokens(loaded.tokenizer, kept)), stored=weights, total_tokens=total, limit=limit,
        seconds=seconds)


def attention_of(loaded: LoadedModel, text: str, cache: ModelCache | None = None,
                 compute: Callable[..., AttentionResult] = compute_attention) -> AttentionResult:
    """The attention of a (valid) text under a loaded model: from ``cache`` when it holds it, else one
    forward pass (``compute``: where it runs, e.g. a ZeroGPU worker), stored in ``cache``."""
    if cache is None:
        return compute(loaded, text)
    return cache.get("attention", loaded, text, lambda: compute(loaded, text))


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class AttentionView:
    """What to show of a result: valid for the result it was parsed against.

    kind: 'head' (one head of ``layer``), 'heads' (every head of ``layer``; ``head`` is the one to
    open), 'aggregate' (mean or max over heads / layers / all, see AGGREGATES) or 'token' (where the
    query ``token`` looks, in every head of ``layer`` or, with scope 'all', of every layer)."""

    kind: str = "head"
    layer: int = 0
    head: int = 0
    aggregate: str = "mean-heads"
    token: int = 0
    scope: str = "layer"

    @classmethod
    def parse(cls, result: AttentionResult, view="head", layer=0, head=0, aggregate="mean-heads", token=None,
              scope="layer") -> AttentionView:
        """A view from request values (keys or labels for the choices; token None or -1 = the last one),
        checked against the result's layers, heads and tokens; ValidationError names what is wrong."""
        return cls(kind=check_choice("view", view, VIEWS, default="head"),
                   layer=check_index("layer", layer, result.n_layers),
                   head=check_index("head", head, result.n_heads),
                   aggregate=check_choice("aggregate", aggregate, AGGREGATES, default="mean-heads"),
                   token=check_position("token", token, result.n_tokens),
                   scope=check_choice("scope", scope, SCOPES, default="layer"))

    def describe(self) -> str:
        """Which heads the view draws on, in words."""
        if self.kind == "head":
            return f"layer {self.layer}, head {self.head}"
        if self.kind == "heads":
            return f"the heads of layer {self.layer}"
        if self.kind == "aggregate":
            return AGGREGATES[self.aggregate].lower()
        return f"every head of layer {self.layer}" if self.scope == "layer" else "every head of every layer"


@dataclass(frozen=True)
class ViewMatrix:
    """The numbers a view shows. ``values`` is [T, T] (query x key) for 'head' and 'aggregate',
    [heads, T, T] for 'heads', and [rows, token + 1] (one row per head) for 'token'."""

    values: np.ndarray
    row_labels: list[str]  # per query token, or 'L1 H0' per head for the 'token' view
    col_labels: list[str]  # per key token
    stem: str  # a file name for exports, e.g. 'attention_layer1_head2'



def aggregate_matrix(result: AttentionResult, aggregate: str, layer: int = 0, head: int = 0) -> np.ndarray:
    """[T, T] mean or max over the heads of `layer`, over the layers (for head number `head`), or over all."""
    how, _, over = aggregate.partition("-")
    if over == "heads":
        stack = result.layer(layer)
    elif over == "layers":
        stack = result.across_layers(head)
    else:
        w = result.weights
        stack = w.reshape(-1, *w.shape[2:])
    out = stack.mean(axis=0, dtype=np.float64) if how == "mean" else stack.max(axis=0)
    return out.astype(np.float32)


def focus_matrix(result: AttentionResult, token: int, scope: str = "layer", layer: int = 0
                 ) -> tuple[np.ndarray, list[str]]:
    """Where the token at position `token` looks: [rows, token + 1] with one row per head of `layer`
    (scope 'layer') or per (layer, head) (scope 'all'), and the row labels."""
    q = token
    if scope == "layer":
        return result.rows(q)[layer], [f"L{layer} H{h}" for h in range(result.n_heads)]
    rows = result.rows(q).reshape(-1, q + 1)
    return rows, [f"L{lay} H{h}" for lay in range(result.n_layers) for h in range(result.n_heads)]


def looking_row(result: AttentionResult, view: AttentionView) -> np.ndarray:
    """Where the view's query token looks, one weight per token up to it: its row of
    ``view_matrix(result, view)`` (averaged over the heads when the view holds several), computed
    from that one row of every head instead of the whole matrix."""
    q = view.token
    rows = result.rows(q)  # [layers, heads, q + 1]
    if view.kind == "head":
        return rows[view.layer, view.head]
    if view.kind == "aggregate":
        how, _, over = view.aggregate.partition("-")
        stack = rows[view.layer] if over == "heads" else rows[:, view.head] if over == "layers" else rows.reshape(
            -1, q + 1)
        return (stack.mean(axis=0, dtype=np.float64) if how == "mean" else stack.max(axis=0)).astype(np.float32)
    if view.kind == "token" and view.scope == "all":
        return rows.reshape(-1, q + 1).mean(axis=0)
    return rows[view.layer].mean(axis=0)  # 'heads', and 'token' in one layer


def view_matrix(result: AttentionResult, view: AttentionView, max_label_chars: int = 14) -> ViewMatrix:
    """The matrix ``view`` shows of ``result``, with its row and column labels (see :class:`ViewMatrix`)."""
    labels = axis_labels(result.tokens, max_chars=max_label_chars)
    if view.kind == "head":
        return ViewMatrix(result.head(view.layer, view.head), labels, labels,
                          f"attention_layer{view.layer}_head{view.head}")
    if view.kind == "heads":
        return ViewMatrix(result.layer(view.layer), labels, labels, f"attention_layer{view.layer}_all_heads")
    if view.kind == "aggregate":
        return ViewMatrix(aggregate_matrix(result, view.aggregate, view.layer, view.head), labels, labels,
                          f"attention_{view.aggregate}_layer{view.layer}_head{view.head}")
    rows, row_labels = focus_matrix(result, view.token, view.scope, view.layer)
    return ViewMatrix(rows, row_labels, labels[: view.token + 1], f"attention_token{view.token}_{view.scope}")


# ----------------------------------------------------------------------------- blocks of tokens


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


# ----------------------------------------------------------------------------- labels, payloads, exports


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


def api_payload(result: AttentionResult, view: AttentionView, vm: ViewMatrix | None = None, decimals: int = 6
                ) -> dict:
    """JSON of /attention: the tokens, the [T, T] matrix of the view's layer/head, and for the
    'aggregate' and 'token' views the matrix the view shows (``vm``, when already computed)."""
    data = {
        "model": result.model_name,
        "precision": result.precision,
        "layer": view.layer,
        "head": view.head,
        "n_layers": result.n_layers,
        "n_heads": result.n_heads,
        "tokens": list(result.tokens),
        "token_ids": list(result.token_ids),
        "total_tokens": result.total_tokens,
        "truncated_tokens": result.truncated,
        "weights": _rounded(result.head(view.layer, view.head), decimals),
        "view": view.kind, "aggregate": view.aggregate, "token": view.token, "scope": view.scope,
        "notice": result.notice(),
    }
    if view.kind in ("aggregate", "token"):
        vm = vm or view_matrix(result, view)
        data["view_weights"] = _rounded(vm.values, decimals)
        if view.kind == "token":
            data["view_rows"] = vm.row_labels
    return data


def _rounded(m: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(m, dtype=np.float64), decimals).tolist()


def matrix_csv(matrix: np.ndarray, row_labels, col_labels, corner: str = "query \\ key") -> str:
    """A matrix as CSV with labelled rows and columns (blank cells where there is nothing: NaN)."""
    return csv_text([[corner, *col_labels]] + [[label, *("" if math.isnan(v) else f"{v:.6g}" for v in row)]
                                               for label, row in zip(row_labels, np.asarray(matrix, dtype=np.float64))])


def export_tables(result: AttentionResult, view: AttentionView, max_numbers: int) -> tuple[str, str, dict]:
    """(file stem, CSV text, JSON-able dict) of the exact weights the view shows, token by token even
    when the picture groups tokens in blocks. ValidationError past ``max_numbers`` weights."""
    vm = view_matrix(result, view, max_label_chars=1000)
    if vm.values.size > max_numbers:
        if view.kind == "heads":
            raise ValidationError(f"This layer holds {vm.values.size:,} weights, too many for one file: "
                                  "export one head at a time (One head view).")
        raise ValidationError(f"This view holds {vm.values.size:,} weights, too many for one file.")
    if view.kind == "heads":
        text = "".join(f"# head {h}\n" + matrix_csv(m, vm.row_labels, vm.col_labels) for h, m in enumerate(vm.values))
    elif view.kind == "token":
        text = matrix_csv(vm.values, vm.row_labels, vm.col_labels, corner="head \\ key")
    else:
        text = matrix_csv(vm.values, vm.row_labels, vm.col_labels)
    data: dict = {"model": result.model_name, "precision": result.precision, "view": view.kind,
                  "tokens": list(result.tokens), "token_ids": list(result.token_ids)}
    by_view: dict[str, dict] = {"head": dict(layer=view.layer, head=view.head),
                                "aggregate": dict(aggregate=view.aggregate, layer=view.layer, head=view.head),
                                "heads": dict(layer=view.layer),
                                "token": dict(token=view.token, scope=view.scope, rows=vm.row_labels)}
    data.update(by_view[view.kind])
    data["weights"] = _rounded(vm.values, 6)
    return vm.stem, text, data
