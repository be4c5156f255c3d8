"""Batched generation: one decode loop per model runs every visitor's generation together. No Gradio.

A :class:`BatchScheduler` owns one thread that, while any generation is active, repeats: admit the
requests that arrived (their prompts read together in one left-padded forward pass, then they join
the batch), run
**one batched forward pass** for the next token of every active row, choose each row's token, drop
the rows that finished or were cancelled, and hand the chosen tokens to their streams, described
(probability, alternatives, entropy) in bunches of passes (:data:`SAY_EVERY_S`). A Stop therefore
takes effect at the next forward pass, and a new visitor waits at most one pass before the prompt is read.

Each request keeps its own state in its own object (:class:`_Request`): its sampling settings as
transformers' logits processors (:func:`demo.core.sampling.build_processors`), its seeded
:class:`~demo.core.sampling.TokenChooser`, and its token history. Rows with equal settings (whatever their
seeds) go through the processors in one call and :func:`demo.core.sampling.pick_tokens` draws each
row's token with that row's generator: the per-row arithmetic of the calls ``generate`` makes for a
single request, so the same seed and settings draw the same text alone or inside a batch (up to the
last bits of the batched matmuls: see ``docs/architecture.md``).

Why by hand: ``generate`` takes one set of sampling settings per call, and transformers' continuous
batching (``ContinuousBatchingManager``) applies only temperature, top-k and top-p per request, keeps
``do_sample`` and the seed global, drops repetition penalty and no-repeat n-grams, and switches the
model to paged attention for as long as it runs, which breaks the ordinary forward passes of the
Attention and Next-token tabs. What this module writes itself is the bookkeeping of the batch: the
rows of the transformers ``DynamicCache`` (its ``batch_select_indices`` drops rows; new rows are
left-padded and concatenated), the 2-D attention mask and each row's position ids.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList

from demo.core.sampling import ChosenToken, SamplingParams, TokenChooser, build_processors, describe_tokens, pick_tokens
from demo.runtime.loading import LoadedModel
from demo.runtime.threads import pass_threads_for, run_apart

log = logging.getLogger("gpt_explorer")
THREAD_PREFIX = "gpt-explorer-generate"  # the decode loops' threads (see generation.live_generation_threads)
MAX_ROWS = 32  # generations in one batch; more wait for a free row
PREFILL_TOKENS = 2048  # padded prompt tokens read in one forward pass (eager attention's memory grows with its square)
# Chosen tokens are handed to their streams in bunches: at least every SAY_EVERY_S, at once when a row
# joins or ends, and when UNSAID_ROWS rows of scores wait (their memory). Describing a token (its
# probability, alternatives, entropy) costs a fast model about a tenth of a token's time when done pass
# by pass, and about the same for a bunch of passes at once; the streams update at most 20 times a
# second, so 20 ms more wait is not seen. A model slower than that hands each token on at its pass.
SAY_EVERY_S = 0.02
UNSAID_ROWS = 64
_ids = itertools.count(1)


def cache_argument(model) -> str:
    """The name under which the model's forward takes the key-value cache: ``cache`` in the transformers
    releases that renamed it (``past_key_values`` there is deprecated and warns on every call), else
    ``past_key_values``. Read once per decode loop: ``inspect.signature`` costs about as much as a
    small model's token choice."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    """The updated cache from a forward's output, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@dataclass
class Event:
    """What a request's stream receives: a token (with when it was chosen), or the end (``reason``
    'length', 'end of text' or 'error' with ``error``)."""

    token: ChosenToken | None = None
    at: float = 0.0
    reason: str | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Request:
    """One generation: its settings and everything that changes while it runs (never kept in lists
    beside the batch's rows, so dropping a row cannot mix two requests' state)."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    eos_token_id: int | None
    history: torch.Tensor  # [1, prompt + max_new_tokens] token ids; the first `length` are real
    length: int
    processors: LogitsProcessorList
    chooser: TokenChooser
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    over: threading.Event = field(default_factory=threading.Event)  # set with its last event
    generated: int = 0
    ended: bool = False  # its last event (an end reason) has been sent

    @property
    def group(self) -> SamplingParams:
        """Requests with equal settings (whatever their seeds) have their tokens chosen together."""
        return replace(self.params, seed=None)

    def take(self, token_id: int) -> str | None:
        """Append the chosen token to this request's history (its stream gets it later, described: see
        :meth:`BatchScheduler._say`); why this request ends there, if it does."""
        self.history[0, self.length] = token_id
        self.length += 1
        self.generated += 1
        if self.eos_token_id is not None and token_id == self.eos_token_id:
            return "end of text"
        return "length" if self.generated >= self.max_new_tokens else None

    def end(self, event: Event) -> None:
        """Send the last event (an end reason)."""
        self.ended = True
        self.events.put(event)
        self.over.set()


@dataclass
class _Unsaid:
    """The tokens one pass chose for rows with the same settings, not yet handed to their streams."""

    requests: list[_Request]
    rows: torch.Tensor  # [requests, vocab]: the probabilities the tokens were drawn from, or (greedy) the scores
    are_probs: bool
    token_ids: list[int]
    reasons: list[str | None]  # the end each token brings, if any
    at: float  # when they were chosen


class Ticket:
    """A submitted generation, seen from the stream that waits for its tokens."""

    def __init__(self, request: _Request, scheduler: BatchScheduler):
        self._request, self._scheduler = request, scheduler

    def cancel(self) -> None:
        """Stop this generation: the tokens chosen so far are handed on at once (described here if the
        loop has not yet), and the loop drops its row before the next forward pass."""
        self._scheduler.cancel(self._request)

    def ready(self) -> list[Event]:
        """The events that have arrived, without waiting."""
        out = []
        while True:
            try:
                out.append(self._request.events.get_nowait())
            except queue.Empty:
                return out

    def wait(self, seconds: float) -> list[Event]:
        """The events that have arrived, waiting at most ``seconds`` for the first (none: an empty list;
        an error event if the decode loop has ended without this generation's end)."""
        try:
            first = self._request.events.get(timeout=max(seconds, 0.0))
        except queue.Empty:
            if not self._scheduler.active and self._request.events.empty():
                return [Event(reason="error", error=RuntimeError("the decode loop ended"))]
            return []
        return [first, *self.ready()]

    def wait_end(self, seconds: float) -> bool:
        """Wait at most ``seconds`` for this generation's last event to be sent (not for its tokens); whether it was."""
        return self._request.over.wait(max(seconds, 0.0))

    @property
    def chosen(self) -> list[ChosenToken]:
        return self._request.chooser.chosen


class _Batch:
    """The rows decoding together: their requests, the transformers cache and the 2-D attention mask
    (1 = a real token, 0 = left padding), always changed together."""

    def __init__(self):
        self.requests: list[_Request] = []
        # None while the batch is empty (typed loosely: torch's and transformers' own types of a
        # cache's layers and a tensor's slices are wider than what this batch holds)
        self.cache: Any = None  # DynamicCache
        self.mask: Any = None  # torch.Tensor [rows, columns]

    def __len__(self) -> int:
        return len(self.requests)

    def keep(self, keep: list[int]) -> None:
        """Keep only these rows (indices into the current rows), then drop columns that are padding in
        every remaining row."""
        if len(keep) == len(self.requests):
            return
        self.requests = [self.requests[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self._trim()

    def add(self, requests: list[_Request], cache: DynamicCache, mask: torch.Tensor) -> None:
        """New rows whose prompts were read into ``cache``, left-padded as ``mask`` says."""
        if self.cache is None:
            self.requests, self.cache, self.mask = list(requests), cache, mask
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            pad_old, pad_new = width - self.mask.shape[1], width - mask.shape[1]
            self.mask = torch.cat([F.pad(self.mask, (pad_old, 0)), F.pad(mask, (pad_new, 0))])
            new_layers: list[Any] = list(cache.layers)
            for old, new in zip(self.cache.layers, new_layers):
                old.keys = torch.cat([F.pad(old.keys, (0, 0, pad_old, 0)), F.pad(new.keys, (0, 0, pad_new, 0))])
                old.values = torch.cat([F.pad(old.values, (0, 0, pad_old, 0)),
                                        F.pad(new.values, (0, 0, pad_new, 0))])
            self.requests.extend(requests)
        self._trim()

    def _trim(self) -> None:
        """Drop the columns that are padding in every row."""
        first = int(self.mask.any(dim=0).nonzero()[0])
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


class BatchScheduler:
    """The decode loop of one loaded model. :meth:`submit` queues a generation and returns its
    :class:`Ticket`; the loop's thread starts with the first request and ends when none is left."""

    def __init__(self, loaded: LoadedModel, max_rows: int = MAX_ROWS):
        self.loaded, self.max_rows = loaded, max_rows
        self._cache_arg = cache_argument(loaded.model)
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._running: list[_Request] = []  # the batch's requests (for cancel_all)
        self.passes = 0  # batched forward passes run (for tests and benchmarks)
        self.max_batch = 0  # the most rows one forward pass has decoded
        self._unsaid: list[_Unsaid] = []  # chosen tokens waiting to be described and handed on
        self._said_lock = threading.Lock()  # held while _unsaid changes or tokens are handed on (the loop, a Stop)
        self._said_at = 0.0  # when the last bunch was handed on
        self._changed = False  # a row joined or ended since then
        self.threads = pass_threads_for(loaded.model.device.type)  # the count of each pass, on a CPU

    def submit(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int) -> Ticket:
        """Queue a generation (``params`` with its seed resolved when sampling); ids already fit the
        model's context with the new tokens."""
        device = self.loaded.model.device
        history = torch.zeros((1, len(prompt_ids) + max_new_tokens), dtype=torch.long, device=device)
        history[0, :len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        request = _Request(prompt_ids=list(prompt_ids), params=params, max_new_tokens=max_new_tokens,
                           eos_token_id=self.loaded.tokenizer.eos_token_id, history=history,
                           length=len(prompt_ids), processors=build_processors(params),
                           chooser=TokenChooser(params.do_sample, params.seed))
        with self._lock:
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-{next(_ids)}",
                                                daemon=True)
                self._thread.start()
        return Ticket(request, self)

    @property
    def active(self) -> bool:
        return self._thread is not None

    @property
    def streams(self) -> int:
        """Generations running or waiting on this loop."""
        return len(self._running) + len(self._pending)

    @property
    def live(self) -> int:
        """Generations waiting, being read or decoding that no Stop has cancelled yet."""
        with self._lock:
            requests = self._pending + self._running
        return sum(not (r.cancelled.is_set() or r.ended) for r in requests)

    def cancel(self, request: _Request) -> None:
        """Stop one generation. The tokens chosen for it that wait for their bunch are described and
        handed on first, here (a Stop keeps every token chosen before it, even while the model is in
        the middle of a pass); what the loop chooses for it afterwards is never handed on."""
        with self._said_lock:
            if (not request.cancelled.is_set() and not request.ended
                    and any(request in u.requests for u in self._unsaid)):
                # in a thread that ends with it: torch keeps an OpenMP team for every thread that ran it
                run_apart(self._hand_on, self._unsaid, only=request)
            request.cancelled.set()

    def cancel_all(self) -> None:
        """Cancel every generation of this loop (pending and running)."""
        with self._lock:
            for request in self._pending + self._running:
                request.cancelled.set()

    # ------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        batch = _Batch()
        if self.threads:
            self.threads.start()
        while True:
            with self._lock:
                room = self.max_rows - len(batch)
                admitted, self._pending = self._pending[:room], self._pending[room:]
                if not admitted and not batch:
                    self._thread, self._running = None, []
                    return
            self._running = batch.requests + admitted  # in flight (for cancel_all and live)
            try:
                with torch.inference_mode():
                    self._drop(batch)
                    for group in _prefill_groups([r for r in admitted if not r.cancelled.is_set()]):
                        if self.threads:
                            self.threads.full()
                        self._admit(batch, group)
                    self._drop(batch)
                    self._running = list(batch.requests)
                    self._say_if_due(batch)  # the new rows' first tokens go out before the next pass
                    if batch:
                        self._decode(batch)
                        self._say_if_due(batch)
            except Exception as exc:  # a failed pass ends every generation in it that has not ended, with the reason
                log.exception("batched generation failed")
                with self._said_lock:
                    stranded = batch.requests + admitted + [r for u in self._unsaid for r in u.requests]
                    self._unsaid = []
                    for request in dict.fromkeys(stranded):
                        if not request.ended:
                            request.end(Event(reason="error", error=exc))
                batch = _Batch()

    def _admit(self, batch: _Batch, requests: list[_Request]) -> None:
        """Read the prompts of requests that arrived together (one forward pass, left-padded), choose
        their first tokens, add the rows that go on to the batch."""
        model = self.loaded.model
        device = requests[0].history.device
        width = max(r.length for r in requests)
        ids = torch.zeros((len(requests), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(requests):
            ids[i, width - r.length:] = r.history[0, :r.length]
            mask[i, width - r.length:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{self._cache_arg: DynamicCache(config=model.config)})
        keep = self._choose(requests, out.logits[:, -1, :])
        self._changed = True  # the first tokens go out at once
        if keep:
            cache = cache_of(out)
            if len(keep) < len(requests):
                cache.batch_select_indices(torch.tensor(keep, device=device))
            batch.add([requests[i] for i in keep], cache, mask[keep])

    def _decode(self, batch: _Batch) -> None:
        """One batched forward: every row's last token in, every row's next token out."""
        requests = batch.requests
        device = batch.mask.device
        last = torch.cat([r.history[:, r.length - 1:r.length] for r in requests])
        positions = batch.mask.sum(dim=1, keepdim=True)
        batch.mask = torch.cat([batch.mask, torch.ones((len(requests), 1), dtype=torch.long, device=device)], dim=1)
        if self.threads:
            self.threads.begin(len(requests))
        out = self.loaded.model(input_ids=last, attention_mask=batch.mask, position_ids=positions, use_cache=True,
                                **{self._cache_arg: batch.cache})
        batch.cache = cache_of(out)
        self.passes += 1
        self.max_batch = max(self.max_batch, len(requests))
        batch.keep(self._choose(requests, out.logits[:, -1, :]))

    def _choose(self, requests: list[_Request], logits: torch.Tensor) -> list[int]:
        """Choose every live row's next token (``logits``: [rows, vocab]); the rows that go on. Rows
        with the same settings go through transformers' processors and the choosers together; each
        keeps its own history and seeded generator. The tokens wait in ``_unsaid`` for :meth:`_say`."""
        groups: dict[SamplingParams, list[int]] = {}
        for i, r in enumerate(requests):
            if not r.cancelled.is_set():
                groups.setdefault(r.group, []).append(i)
        keep = []
        at = time.perf_counter()
        for rows in groups.values():
            members = [requests[i] for i in rows]
            scores, picks, probs = _choose_group(members, logits[rows])
            reasons = [r.take(token_id) for r, token_id in zip(members, picks)]
            with self._said_lock:
                self._unsaid.append(_Unsaid(members, scores if probs is None else probs, probs is not None, picks,
                                            reasons, at))
            self._changed |= any(reasons)
            keep += [i for i, reason in zip(rows, reasons) if not reason]
        return sorted(keep)

    def _say_if_due(self, batch: _Batch) -> None:
        """Hand on the waiting tokens if a row joined or ended, the batch is empty, enough rows of
        scores wait, or :data:`SAY_EVERY_S` has passed since the last time."""
        if self._unsaid and (self._changed or not batch or sum(len(u.requests) for u in self._unsaid) >= UNSAID_ROWS
                             or time.perf_counter() - self._said_at >= SAY_EVERY_S):
            self._say()

    def _say(self) -> None:
        """Describe the tokens chosen since the last call (the rows of several passes at once) and hand
        each to its stream, with the end it brings. A row cancelled meanwhile gets nothing more: its
        tokens went out with its cancel (:meth:`cancel`)."""
        with self._said_lock:
            self._hand_on(self._unsaid)  # emptied once all are handed on (if this fails, the loop ends their streams)
            self._unsaid = []
        self._said_at, self._changed = time.perf_counter(), False

    @staticmethod
    @torch.inference_mode()
    def _hand_on(unsaid: list[_Unsaid], only: _Request | None = None) -> None:
        """Describe and hand on the waiting tokens of every request not cancelled (or of ``only``),
        each with the end it brings. Called with the lock held."""
        for are_probs in (True, False):  # a request's tokens are all of one kind: each keeps its order
            tables, told = [], []
            for u in unsaid:
                if u.are_probs != are_probs:
                    continue
                live = [j for j, r in enumerate(u.requests)
                        if (r is only if only is not None else not r.cancelled.is_set())]
                if live:
                    tables.append(u.rows if len(live) == len(u.requests) else u.rows[live])
                    told += [(u.requests[j], u.token_ids[j], u.reasons[j], u.at) for j in live]
            if not told:
                continue
            table = tables[0] if len(tables) == 1 else torch.cat(tables)
            chosen = describe_tokens(table if are_probs else torch.softmax(table.float(), dim=-1),
                                     [t[1] for t in told], [t[0].chooser for t in told])
            for (request, _, reason, at), c in zip(told, chosen):
                request.events.put(Event(token=c, at=at))
                if reason:
                    request.end(Event(reason=reason))

    @staticmethod
    def _drop(batch: _Batch) -> None:
        """Drop cancelled rows (a Stop or a closed page)."""
        if batch:
            batch.keep([i for i, r in enumerate(batch.requests) if not r.cancelled.is_set()])


def _choose_group(requests: list[_Request], logits: torch.Tensor
                  ) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
    """The scores and next token of requests with the same settings (``logits``: [rows, vocab]), as
    ``generate`` would choose each alone: fp32 scores, the processors on the request's own history, its
    chooser; and the probabilities the tokens were drawn from (None: greedy, not computed).
    Histories of different lengths are padded with a token the row already has, which changes nothing
    for the repetition penalty (it looks at which tokens occur); a no-repeat n-gram rule looks at the
    order of the tokens, so those rows go one at a time."""
    scores = logits.float()
    if not requests[0].processors:  # neutral settings (greedy, say): nothing to apply, no copy to make
        return scores, *pick_tokens(scores, [r.chooser for r in requests])
    if len(requests) == 1 or requests[0].params.no_repeat_ngram_size > 0:
        for i, r in enumerate(requests):
            scores[i:i + 1] = r.processors(cast(torch.LongTensor, r.history[:, :r.length]),
                                           cast(torch.FloatTensor, scores[i:i + 1]))
    else:
        width = max(r.length for r in requests)
        ids = torch.stack([F.pad(r.history[0, :r.length], (0, width - r.length), value=int(r.history[0, 0]))
                           for r in requests])
        scores = requests[0].processors(cast(torch.LongTensor, ids), cast(torch.FloatTensor, scores))
    return scores, *pick_tokens(scores, [r.chooser for r in requests])


def _prefill_groups(requests: list[_Request]) -> list[list[_Request]]:
    """Arrived requests in groups whose prompts are read in one forward pass each, similar lengths
    together, at most :data:`PREFILL_TOKENS` padded tokens a group (or one long prompt)."""
    groups: list[list[_Request]] = []
    for r in sorted(requests, key=lambda r: r.length):
        if groups and (len(groups[-1]) + 1) * r.length <= PREFILL_TOKENS:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


_schedulers_lock = threading.Lock()
_schedulers: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At exit, let running decode loops end (a thread killed inside torch aborts the process)."""
    for scheduler in list(_schedulers):
        with scheduler._lock:
            pending, scheduler._pending = scheduler._pending, []
            thread = scheduler._thread
        for request in pending:
            request.cancelled.set()
        if thread is not None:
            scheduler.cancel_all()
            thread.join(timeout=5)


def scheduler_for(loaded: LoadedModel, max_rows: int = MAX_ROWS) -> BatchScheduler:
    """The decode loop of this loaded model (made on first use, kept with the model)."""
    with _schedulers_lock:
        if loaded.scheduler is None:
            loaded.scheduler = BatchScheduler(loaded, max_rows)
            _schedulers.add(loaded.scheduler)
        return loaded.scheduler
