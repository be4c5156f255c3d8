"""Next-token analysis: the full-vocabulary distribution before and after the sampling settings,
appending one token at a time and the logit lens. Plain data, no Gradio; every argument is already valid.

The "after" distribution is computed by the very processors generation uses
(:func:`demo.core.sampling.build_processors`, applied in list order like ``LogitsProcessorList``), so the
bars can never disagree with the sampler. Running the model is the only expensive part, so the raw
logits of the last position are kept in the app's :class:`~demo.core.cache.ModelCache` per (model,
token ids): moving a slider re-applies the processors to cached logits and never reruns the model.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.sampling import SamplingParams, build_processors, entropy_bits
from demo.core.tokens import display_token, make_visible
from demo.core.validation import MAX_SEED
from demo.runtime.loading import LoadedModel

MAX_TOP_N = 200
LENS_MAX_POSITIONS = 32


# ----------------------------------------------------------------------------- context window and logits


def model_window(loaded: LoadedModel, ids: list[int]) -> tuple[list[int], int]:
    """The last ``context_length`` ids (what the model can see) and how many were dropped."""
    ctx = loaded.context_length
    dropped = max(0, len(ids) - ctx)
    return list(ids[dropped:]), dropped


def forward_last_logits(loaded: LoadedModel, window_ids: list[int]) -> torch.Tensor:
    """Run the model once; the logits of the last position as a float32 CPU tensor of shape (vocab,).
    float32 like ``generate``, which upcasts the logits before the processors see them."""
    model = loaded.model
    input_ids = torch.tensor([window_ids], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    return out.logits[0, -1, :].detach().to(device="cpu", dtype=torch.float32).clone()


Forward = Callable[[LoadedModel, list[int]], torch.Tensor]  # (loaded, window ids) -> last position's logits


def last_logits(loaded: LoadedModel, window_ids: list[int], cache: ModelCache | None = None,
                forward: Forward = forward_last_logits) -> torch.Tensor:
    """The last position's logits: from ``cache`` when it holds them (a slider move reruns nothing),
    else one forward pass (``forward``: where it runs, e.g. a ZeroGPU worker)."""
    if cache is None:
        return forward(loaded, window_ids)
    return cache.get("logits", loaded, tuple(window_ids), lambda: forward(loaded, window_ids))


# ----------------------------------------------------------------------------- the distribution


@dataclass
class TokenRow:
    rank: int  # 1 = the model's most likely token (raw)
    id: int
    token: str  # display label: '␣the', '↵', '<0xE2>'
    text: str  # the decoded text of the token alone
    raw_prob: float  # softmax of the model's logits
    prob: float  # probability after the sampling settings (what the sampler draws from)
    kept: bool  # False when a filter removed it (probability 0 after the settings)
    rank_after: int | None  # rank in the filtered distribution (None when filtered)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FilterEffect:
    name: str  # 'repetition penalty', 'temperature', 'top-k', …
    value: float
    survivors: int  # tokens with a non-zero probability after this filter


@dataclass
class Distribution:
    model: str
    params: SamplingParams
    window_ids: list[int]
    dropped: int  # tokens cut from the start of the text to fit the context window
    raw_probs: torch.Tensor  # (vocab,)
    probs: torch.Tensor  # (vocab,) after the settings
    filters: list[FilterEffect] = field(default_factory=list)
    _raw_rank: torch.Tensor | None = None
    _after_rank: torch.Tensor | None = None
    _kept: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.raw_probs.shape[0])

    @property
    def kept(self) -> torch.Tensor:
        """True for the tokens the settings leave drawable (a filter sets the others' score to -inf)."""
        if self._kept is None:
            self._kept = self.probs > 0
        return self._kept

    @property
    def survivors(self) -> int:
        return int(self.kept.sum())

    @property
    def entropy_before(self) -> float:
        return entropy_bits(self.raw_probs)

    @property
    def entropy_after(self) -> float:
        return entropy_bits(self.probs)

    @property
    def greedy_id(self) -> int:
        """What greedy decoding (and 'Append most likely') picks: argmax after the settings."""
        return int(self.probs.argmax())

    def _ranks(self):
        if self._raw_rank is None:
            self._raw_rank = ranks_of(self.raw_probs)
            after = torch.where(self.kept, self.probs, torch.full_like(self.probs, -1.0))
            self._after_rank = ranks_of(after)
        return self._raw_rank, self._after_rank

    def row(self, loaded: LoadedModel, token_id: int) -> TokenRow:
        raw_rank, after_rank = self._ranks()
        t = int(token_id)
        kept = bool(self.kept[t])
        return TokenRow(rank=int(raw_rank[t]), id=t, token=display_token(loaded.tokenizer, t),
                        text=loaded.decode([t]), raw_prob=float(self.raw_probs[t]), prob=float(self.probs[t]),
                        kept=kept, rank_after=int(after_rank[t]) if kept else None)

    def top_ids(self, n: int) -> list[int]:
        """The model's n most likely tokens (ranks 1..n), plus any of the n most likely after the
        settings that are not among them (a repetition penalty can promote a token), in raw order.
        Without a penalty the second set is inside the first: the other settings keep the order."""
        n = max(1, min(int(n), self.vocab_size))
        raw_rank, after_rank = self._ranks()
        wanted = (raw_rank <= n) | (self.kept & (after_rank <= n))
        ids = torch.nonzero(wanted).flatten().tolist()
        return sorted(ids, key=lambda i: int(raw_rank[i]))

    def rows(self, loaded: LoadedModel, n: int) -> list[TokenRow]:
        return [self.row(loaded, i) for i in self.top_ids(n)]

    def as_dict(self, loaded: LoadedModel, n: int = 20) -> dict:
        """Everything the view and the API show, JSON-able."""
        g = self.greedy_id
        return {
            "model": self.model,
            "settings": self.params.as_dict(),
            "greedy": not self.params.do_sample,
            "context_tokens": len(self.window_ids),
            "truncated_tokens": self.dropped,
            "last_token": display_token(loaded.tokenizer, self.window_ids[-1]),
            "vocab_size": self.vocab_size,
            "survivors": self.survivors,
            "entropy_before_bits": round(self.entropy_before, 4),
            "entropy_after_bits": round(self.entropy_after, 4),
            "most_likely": self.row(loaded, g).as_dict(),
            "filters": [asdict(f) for f in self.filters],
            "rows": [r.as_dict() for r in self.rows(loaded, n)],
        }


def ranks_of(values: torch.Tensor) -> torch.Tensor:
    """rank[i] = 1 + position of i when sorted by value, largest first (ties: lower id first)."""
    order = torch.argsort(values, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, order.numel() + 1)
    return rank


FILTER_NAMES = {
    "RepetitionPenaltyLogitsProcessor": ("repetition penalty", "penalty"),
    "NoRepeatNGramLogitsProcessor": ("no-repeat n-gram", "ngram_size"),
    "TemperatureLogitsWarper": ("temperature", "temperature"),
    "TopKLogitsWarper": ("top-k", "top_k"),
    "TopPLogitsWarper": ("top-p", "top_p"),
    "MinPLogitsWarper": ("min-p", "min_p"),
}


def apply_settings(params: SamplingParams, window_ids: list[int], logits: torch.Tensor
                   ) -> tuple[torch.Tensor, list[FilterEffect]]:
    """Processed scores (1, vocab) and the survivors after each processor: the processors from
    ``build_processors(params)``, called one by one in list order exactly as ``LogitsProcessorList``
    (and so ``generate``) calls them."""
    input_ids = torch.tensor([window_ids], dtype=torch.long, device=logits.device)
    scores = logits.reshape(1, -1).clone()
    effects = []
    for proc in build_processors(params):
        scores = proc(input_ids, scores)
        name, attr = FILTER_NAMES.get(type(proc).__name__, (type(proc).__name__, None))
        value = float(getattr(proc, attr)) if attr and getattr(proc, attr, None) is not None else float("nan")
        effects.append(FilterEffect(name, value, int(torch.isfinite(scores).sum())))
    return scores, effects


def distribution(loaded: LoadedModel, ids: list[int], params: SamplingParams, cache: ModelCache | None = None,
                 forward: Forward = forward_last_logits) -> Distribution:
    """The next-token distribution after ``ids`` (the last context_length of them), raw and after
    ``params``. Reruns the model only for ids ``cache`` has not seen."""
    window, dropped = model_window(loaded, ids)
    logits = last_logits(loaded, window, cache, forward)
    scores, effects = apply_settings(params, window, logits)
    raw = torch.softmax(logits.double(), dim=-1).float()
    after = torch.softmax(scores[0].float(), dim=-1)
    return Distribution(loaded.name, params, window, dropped, raw, after, effects)


def lookup(loaded: LoadedModel, dist: Distribution, query: str) -> list[dict]:
    """Probability and rank of a typed token or word (a valid, non-empty text). A word's next-token
    probability is that of its first token; both spellings, without and with a leading space, are
    given. '␣' and '↵' may be typed for a space and a newline."""
    q = query.replace("␣", " ").replace("↵", "\n")
    variants = [q] if q[0].isspace() else [q, " " + q]
    out = []
    for v in variants:
        ids = loaded.tokenizer(v, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        row = dist.row(loaded, ids[0]).as_dict()
        row.update(query=v, query_label=make_visible(v), n_tokens=len(ids),
                   pieces=[display_token(loaded.tokenizer, i) for i in ids])
        out.append(row)
    return out


# ----------------------------------------------------------------------------- one token at a time


def draw_seed(seed: int, position: int) -> int:
    """A 63-bit generator seed derived from (seed, position): the same text and seed give the same draw,
    whatever was clicked before."""
    digest = hashlib.sha256(f"gpt-explorer:{int(seed)}:{int(position)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Appended:
    token_id: int
    prob: float  # its probability in the distribution it was drawn from (after the settings)
    raw_prob: float
    mode: str  # 'most likely', 'sampled', 'chosen'
    seed: int | None = None
    position: int | None = None  # position of the new token in the text (0-based), mixed into the seed


APPEND_MODES = ("most likely", "sampled", "chosen")


def append_token(loaded: LoadedModel, ids: list[int], params: SamplingParams, mode: str, token_id: int | None = None,
              cache: ModelCache | None = None, forward: Forward = forward_last_logits) -> Appended:
    """The next token: 'most likely' (argmax after the settings, as greedy generation picks it),
    'sampled' (a draw from the after-settings distribution with a generator seeded from (seed, position);
    with sampling off in the settings this is the most likely token too), or 'chosen' (a valid
    token_id)."""
    dist = distribution(loaded, ids, params, cache, forward)
    probs = dist.probs.reshape(1, -1)
    if mode == "most likely" or (mode == "sampled" and not params.do_sample):
        choice = int(probs.argmax(dim=-1))
        return Appended(choice, float(probs[0, choice]), float(dist.raw_probs[choice]), "most likely")
    if mode == "sampled":
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(draw_seed(seed, len(ids)))
        choice = int(torch.multinomial(probs, 1, generator=gen))
        return Appended(choice, float(probs[0, choice]), float(dist.raw_probs[choice]), "sampled", seed, len(ids))
    if mode == "chosen" and token_id is not None:
        t = int(token_id)
        return Appended(t, float(probs[0, t]), float(dist.raw_probs[t]), "chosen")
    raise ValueError(f"unknown append mode {mode!r} (or 'chosen' without a token)")


# ----------------------------------------------------------------------------- logit lens


def _find(model, paths: list[str]):
    for path in paths:
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    return None


def lens_parts(model):
    """(blocks, final norm, unembedding) for the architectures the catalogue holds, else ValidationError."""
    blocks = _find(model, ["transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"])
    norm = _find(model, ["transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm",
                         "model.decoder.final_layer_norm"])
    head = model.get_output_embeddings()
    if blocks is None or norm is None or head is None:
        raise ValidationError("the logit lens is not available for this model's architecture")
    return blocks, norm, head


@dataclass
class LensResult:
    layers: list[str]  # 'embeddings', 'layer 1', …, 'layer L' (bottom to top)
    positions: list[int]  # positions in the model's window
    input_tokens: list[str]  # the token at each position (the prediction is for the one after it)
    next_tokens: list[str | None]  # the token that actually follows (None after the last)
    top_ids: list[list[int]]  # [layer][position]
    top_tokens: list[list[str]]
    top_probs: list[list[float]]
    alternatives: list[list[list[tuple[str, float]]]]  # [layer][position] -> top few (label, prob)
    final_probs_of_top: list[list[float]]  # [layer][position] prob, at that layer, of the final layer's top token
    dropped: int
    shown_from: int  # first position shown (earlier ones were computed by the model but not shown)

    def as_dict(self) -> dict:
        return asdict(self)


def logit_lens(loaded: LoadedModel, ids: list[int], max_positions: int = 16, top: int = 3) -> LensResult:
    """For each of the last ``max_positions`` positions, the next-token prediction read from every
    layer's residual stream through the final layer norm and the unembedding (the "logit lens").
    The last row is the model's own prediction. ``max_positions`` is in [1, LENS_MAX_POSITIONS]."""
    window, dropped = model_window(loaded, ids)
    model = loaded.model
    blocks, norm, head = lens_parts(model)
    captured: list[torch.Tensor] = []
    # The hooks sit on the shared model, so every forward pass in any thread (another visitor's lens,
    # the decode loop, an attention request) calls them: keep only this thread's, the forward pass below.
    mine = threading.get_ident()

    def hook(_module, _inputs, output):
        if threading.get_ident() == mine:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [b.register_forward_hook(hook) for b in blocks]
    input_ids = torch.tensor([window], dtype=torch.long, device=model.device)
    try:
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                        output_hidden_states=True)
            if len(captured) != len(blocks):
                raise ValidationError("the logit lens could not read this model's layers")
            k = min(max_positions, len(window))
            streams = [out.hidden_states[0]] + captured  # embeddings, then each block's output
            head_dtype = head.weight.dtype if head.weight.dtype.is_floating_point else torch.float32
            per_layer = []
            for h in streams:
                x = norm(h[:, -k:, :].to(head_dtype))
                per_layer.append(torch.softmax(head(x)[0].float(), dim=-1).cpu())  # (k, vocab)
    finally:
        for hd in handles:
            hd.remove()
    tok = loaded.tokenizer
    final_top = per_layer[-1].argmax(dim=-1)
    top_ids, top_tokens, top_probs, alts, final_probs = [], [], [], [], []
    for probs in per_layer:
        t = torch.topk(probs, k=min(top, probs.shape[-1]), dim=-1)
        top_ids.append([int(i) for i in t.indices[:, 0]])
        top_tokens.append([display_token(tok, int(i)) for i in t.indices[:, 0]])
        top_probs.append([float(p) for p in t.values[:, 0]])
        alts.append([[(display_token(tok, int(i)), float(p)) for i, p in zip(ii, pp)]
                     for ii, pp in zip(t.indices.tolist(), t.values.tolist())])
        final_probs.append([float(probs[j, final_top[j]]) for j in range(probs.shape[0])])
    start = len(window) - k
    positions = list(range(start, len(window)))
    return LensResult(
        layers=["embeddings"] + [f"layer {i + 1}" for i in range(len(blocks))],
        positions=positions,
        input_tokens=[display_token(tok, window[p]) for p in positions],
        next_tokens=[display_token(tok, window[p + 1]) if p + 1 < len(window) else None for p in positions],
        top_ids=top_ids, top_tokens=top_tokens, top_probs=top_probs, alternatives=alts,
        final_probs_of_top=final_probs, dropped=dropped, shown_from=start,
    )
