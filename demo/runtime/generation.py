"""Streamed generation, the record of the tokens it drew, and branching from a token. No Gradio.

Each generation is a request to its model's batched decode loop (:mod:`demo.runtime.batching`), which runs
every visitor's generation together; closing the :func:`stream_generate` generator (a Stop, a closed
tab, a cancelled API call) takes its row out of the batch at the next forward pass. The final update
carries every drawn token with its probability and alternatives; :func:`generation_record` turns
that into plain data for the probability-coloured view, and :func:`branch_prompt` continues a
finished generation from another token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from demo.core.errors import ValidationError
from demo.core.sampling import MAX_NEW_TOKENS, ChosenToken, SamplingParams, TokenChooser, build_processors, resolve_seed
from demo.core.tokens import display_token
from demo.core.validation import check_text, encode_text
from demo.runtime.batching import THREAD_PREFIX, Event, scheduler_for
from demo.runtime.loading import LoadedModel


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    sampling: SamplingParams


def validate_request(prompt, max_new_tokens, sampling: SamplingParams) -> GenerationRequest:
    """A generation request from API values (the sampling settings already validated)."""
    return GenerationRequest(prompt=check_text("prompt", prompt), max_new_tokens=MAX_NEW_TOKENS.check(max_new_tokens),
                             sampling=sampling)


@dataclass
class GenerationUpdate:
    text: str  # the text generated so far (without the prompt)
    n_tokens: int
    elapsed_s: float
    ttft_s: float | None
    tokens_per_s: float | None  # decode speed after the first token
    prompt_tokens: int
    truncated_tokens: int  # prompt tokens dropped from the left to fit the context window
    seed: int | None
    done: bool = False
    stop_reason: str | None = None  # 'length', 'end of text', 'stopped', 'error'
    chosen: list[ChosenToken] | None = None  # each generated token with its probability (final update)
    prompt_ids: list[int] | None = None  # the prompt as the model saw it (final update)


def prepare_prompt(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
    """Token ids of the prompt, keeping the most recent tokens so prompt + new tokens fit the
    context window. Returns (ids, number of tokens dropped from the start)."""
    ctx = loaded.context_length
    if max_new_tokens >= ctx:
        raise ValidationError(f"max_new_tokens ({max_new_tokens}) must be below this model's context window of "
                              f"{ctx} tokens, which holds the prompt and the new tokens together: at most {ctx - 1}")
    enc = encode_text(loaded.tokenizer, prompt, name="prompt", limit=ctx - max_new_tokens, keep="last")
    return list(enc.ids), enc.dropped


def live_generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


# Streamed updates are paced: at most 20 a second per generation (text grows smoothly at that rate),
# and about UPDATES_PER_S in all when many generations stream at once (each update costs the server a
# message; tokens that arrive meanwhile share one), so the server's time goes to the model. Every
# update and every wake-up of the stream takes Python's lock from the decode loop, whose small
# forward passes are mostly Python. (The README's *CPU threads* has the served stream at 70 % of raw
# with 50 updates a second, woken at each token, and 87 % with this pace, woken at the first token
# after each update; since then the stream wakes only when an update is due or the generation ends.)
MAX_UPDATES_PER_S = 20
UPDATES_PER_S = 40


def update_interval(streams: int) -> float:
    """Seconds between two updates of one generation while ``streams`` generations run."""
    return max(1 / MAX_UPDATES_PER_S, streams / UPDATES_PER_S)


class _Follower:
    """What one submitted generation has produced so far, turned into updates."""

    def __init__(self, loaded: LoadedModel, ticket, ids: list[int], dropped: int, seed: int | None, t0: float):
        self.loaded, self.ticket, self.ids, self.dropped, self.seed, self.t0 = loaded, ticket, ids, dropped, seed, t0
        self.new: list[int] = []
        self.times: list[float] = []
        self.end: Event | None = None  # the event that ended it

    def absorb(self, events: list) -> bool:
        """Take in events from the ticket; whether a token came."""
        came = False
        for event in events:
            if event.token is not None:
                self.new.append(event.token.token_id)
                self.times.append(event.at)
                came = True
            if event.reason is not None:
                self.end = event
        return came

    def stop(self) -> None:
        """End here with every token chosen so far (a Stop): the model drops the row at its next forward
        pass. (If the last of those tokens ended the generation, it ends as it would have.)"""
        if self.end is None:
            self.ticket.cancel()  # hands on the tokens chosen so far
            self.absorb(self.ticket.ready())
            if self.end is None:
                self.end = Event(reason="stopped")

    def check(self) -> None:
        if self.end is not None and self.end.reason == "error":
            err = self.end.error
            raise RuntimeError(f"generation failed: {type(err).__name__}: {err}") from err

    def update(self) -> GenerationUpdate:
        n, times = len(self.new), self.times
        rate = (n - 1) / (times[-1] - times[0]) if n >= 2 and times[-1] > times[0] else None
        done = self.end is not None
        text = str(self.loaded.tokenizer.decode(self.new, skip_special_tokens=True))
        if not done and text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")  # the rest of a multi-byte character is still to come
        return GenerationUpdate(
            text=text, n_tokens=n, elapsed_s=time.perf_counter() - self.t0,
            ttft_s=times[0] - self.t0 if times else None, tokens_per_s=rate,
            prompt_tokens=len(self.ids), truncated_tokens=self.dropped, seed=self.seed, done=done,
            stop_reason=self.end.reason if self.end is not None else None,
            chosen=self.ticket.chosen[:n] if done else None,
            prompt_ids=self.ids if done else None)


def _submit(loaded: LoadedModel, request: GenerationRequest, t0: float) -> _Follower:
    params = resolve_seed(request.sampling) if request.sampling.do_sample else request.sampling
    ids, dropped = prepare_prompt(loaded, request.prompt, request.max_new_tokens)
    ticket = scheduler_for(loaded).submit(ids, params, request.max_new_tokens)
    return _Follower(loaded, ticket, ids, dropped, params.seed, t0)


class StopRequests:
    """Stop requests by owner (for the app: a visitor's session and the kind of work it stops).

    A Stop is a request, not an interruption: :meth:`request` notes when it was made, and every
    generation of that owner which started before then (:meth:`signal`) ends at its next check with
    what it has generated so far, as a normal last update whose ``stop_reason`` is 'stopped'. So a
    Stop at any moment (before the first token, mid-stream, as the stream ends, after it ended) has
    one outcome, and a Stop that arrives after a generation ended cannot stop the next one. Times are
    ``time.monotonic()`` values; the app passes when each request reached the server."""

    MAX_OWNERS = 4096  # the latest stop of this many owners is kept (a float each)

    def __init__(self):
        self._lock = threading.Lock()
        self._latest: dict[str, float] = {}
        self.count = 0  # requests taken so far (for tests and the log)

    def request(self, owner: str, at: float | None = None) -> None:
        """Stop every generation of ``owner`` that started before ``at`` (default: now)."""
        at = time.monotonic() if at is None else at
        with self._lock:
            latest = max(at, self._latest.pop(owner, at))  # re-inserted: the dict's order is by use
            self._latest[owner] = latest
            self.count += 1
            while len(self._latest) > self.MAX_OWNERS:
                del self._latest[next(iter(self._latest))]

    def signal(self, owner: str, started: float | None = None) -> Callable[[], bool]:
        """A check for a generation of ``owner`` that started at ``started`` (default: now): true
        once a stop of that owner made at or after that moment has been requested."""
        started = time.monotonic() if started is None else started
        return lambda: self._latest.get(owner, float("-inf")) >= started


def stream_generate(loaded: LoadedModel, request: GenerationRequest, poll_s: float = 0.05,
                    stop: Callable[[], bool] | None = None) -> Generator[GenerationUpdate, None, None]:
    """Stream a generation as growing text, decoded in the model's batched decode loop together with
    every other generation on that model (:mod:`demo.runtime.batching`). Close the generator to stop the
    model: its row leaves the batch at the next forward pass. ``stop`` (see :class:`StopRequests`) ends it
    the same way, with a last update that keeps what was generated (``stop_reason`` 'stopped')."""
    with contextlib.closing(stream_samples(loaded, [request], poll_s, stop)) as stream:
        for updates in stream:
            yield updates[0]


def stream_samples(loaded: LoadedModel, requests: list[GenerationRequest], poll_s: float = 0.05,
                   stop: Callable[[], bool] | None = None) -> Generator[list[GenerationUpdate], None, None]:
    """Stream several generations at once (each with its own settings and seed, all in the same
    batched decode loop): each update is the list of their updates, in order; the last has every one
    done. Close the generator, or make ``stop()`` true, to stop them all at the next forward pass (``stop``
    is checked at least every ``poll_s``; the last update then has the unfinished ones 'stopped')."""
    t0 = time.perf_counter()
    followers: list[_Follower] = []
    try:
        for request in requests:
            followers.append(_submit(loaded, request, t0))
        scheduler = scheduler_for(loaded)
        due = 0.0  # when the next update may go (the first goes at once)
        pending = False  # tokens taken in since the last update
        while True:
            pending |= sum(f.absorb(f.ticket.ready()) for f in followers if f.end is None) > 0
            for f in followers:
                f.check()
            if stop is not None and stop():
                for f in followers:
                    f.stop()
            if all(f.end is not None for f in followers):
                break  # the last update goes at once, whatever the pace
            now = time.perf_counter()
            if pending and now >= due:
                yield [f.update() for f in followers]
                pending, due = False, now + update_interval(scheduler.streams)
                continue
            # before the next update is due: sleep until it is (tokens that come meanwhile share it), woken
            # at once by an end only, not by each token; once it is due: wait for the next token
            lead = next(f for f in followers if f.end is None)
            if now < due:
                lead.ticket.wait_end(min(poll_s, due - now))
            else:
                pending |= lead.absorb(lead.ticket.wait(poll_s))
        yield [f.update() for f in followers]
    finally:
        for f in followers:
            f.ticket.cancel()  # also reached on GeneratorExit: a closed stream stops the model at the next forward pass


def generate_alone(loaded: LoadedModel, request: GenerationRequest) -> list[ChosenToken]:
    """One generation with transformers' ``generate`` on its own (no batching): the reference the
    batched loop is checked against, with the same processors and token chooser."""
    params = resolve_seed(request.sampling) if request.sampling.do_sample else request.sampling
    ids, _ = prepare_prompt(loaded, request.prompt, request.max_new_tokens)
    chooser = TokenChooser(params.do_sample, params.seed)
    _generate_with(loaded, ids, params, chooser, request.max_new_tokens)
    return chooser.chosen


def _generate_with(loaded: LoadedModel, ids: list[int], params: SamplingParams, chooser: TokenChooser,
                   max_new_tokens: int, stopping: StoppingCriteriaList | None = None) -> None:
    """transformers' ``generate`` on one sequence with the settings' processors, ``chooser`` drawing
    each token (it records them): the one way the app calls ``generate``."""
    processors = build_processors(params)
    processors.append(chooser)
    input_ids = torch.tensor([ids], device=loaded.model.device)
    tok = loaded.tokenizer
    model: Any = loaded.model  # transformers' GenerationMixin (torch's Module typing hides it)
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, temperature=None, top_k=None, top_p=None, logits_processor=processors,
            stopping_criteria=stopping, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


# ----------------------------------------------------------------------------- generation in slices


class _StopAfter(StoppingCriteria):
    """Stop once ``seconds`` have passed (checked after each token); notes when the first and the last
    token came."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, input_ids, scores, **kwargs):
        self.last = time.perf_counter()
        self.first = self.first or self.last
        return torch.full((input_ids.shape[0],), self.last >= self.deadline, dtype=torch.bool,
                          device=input_ids.device)


@dataclass
class SliceState:
    """Where a generation made of slices stands: plain, picklable data that goes to the process that
    computes the next slice and comes back (see :func:`generate_slice`)."""

    prompt_ids: list[int]
    dropped: int
    seed: int | None
    generated: list[int]
    chosen: list[ChosenToken]
    rng_state: torch.Tensor | None = None  # the sampler's generator, to continue the same draws
    done: bool = False
    stop_reason: str | None = None
    first_token_s: float | None = None  # from the first slice's start to its first token
    decode_s: float = 0.0  # time between each slice's first and last token, all slices together
    decode_tokens: int = 0  # the tokens generated in that time

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token of each slice (like the streamed generation's figure)."""
        return self.decode_tokens / self.decode_s if self.decode_tokens and self.decode_s > 0 else None


def start_slices(loaded: LoadedModel, request: GenerationRequest) -> SliceState:
    """The state before the first slice: the prompt's ids (cut to fit) and the seed."""
    params = resolve_seed(request.sampling) if request.sampling.do_sample else request.sampling
    ids, dropped = prepare_prompt(loaded, request.prompt, request.max_new_tokens)
    return SliceState(prompt_ids=ids, dropped=dropped, seed=params.seed, generated=[], chosen=[])


def generate_slice(loaded: LoadedModel, request: GenerationRequest, state: SliceState, max_tokens: int,
                   max_seconds: float) -> SliceState:
    """Continue a generation by at most ``max_tokens`` tokens or ``max_seconds``; the same seed and
    settings draw the same tokens as one uninterrupted generation (the sampler's generator carries
    over, and the penalties see the whole text). Each slice reads the text so far again (no cache
    carries over), which is the price of being able to stop between slices."""
    if state.done:
        return state
    params = replace(request.sampling, seed=state.seed)
    remaining = request.max_new_tokens - len(state.generated)
    chooser = TokenChooser(params.do_sample, params.seed, rng_state=state.rng_state)
    tok = loaded.tokenizer
    clock = _StopAfter(max_seconds)
    t0 = time.perf_counter()
    _generate_with(loaded, state.prompt_ids + state.generated, params, chooser, min(max_tokens, remaining),
                   StoppingCriteriaList([clock]))
    new = [c.token_id for c in chooser.chosen]
    generated = state.generated + new
    ended = bool(new) and new[-1] == tok.eos_token_id
    done = ended or len(generated) >= request.max_new_tokens
    return replace(state, generated=generated, chosen=state.chosen + chooser.chosen, rng_state=chooser.state(),
                   done=done, stop_reason=("end of text" if ended else "length") if done else None,
                   first_token_s=state.first_token_s if state.first_token_s is not None or clock.first is None
                   else clock.first - t0,
                   decode_s=state.decode_s + ((clock.last - clock.first) if clock.first is not None
                                              and clock.last is not None else 0.0),
                   decode_tokens=state.decode_tokens + max(0, len(new) - 1))


def slice_update(loaded: LoadedModel, state: SliceState, started: float) -> GenerationUpdate:
    """What the page shows after a slice (the final update once the generation is done)."""
    text = str(loaded.tokenizer.decode(state.generated, skip_special_tokens=True))
    return GenerationUpdate(
        text=text, n_tokens=len(state.generated), elapsed_s=time.perf_counter() - started,
        ttft_s=state.first_token_s, tokens_per_s=state.tokens_per_s, prompt_tokens=len(state.prompt_ids),
        truncated_tokens=state.dropped, seed=state.seed, done=state.done, stop_reason=state.stop_reason,
        chosen=state.chosen if state.done else None, prompt_ids=state.prompt_ids if state.done else None)


# ----------------------------------------------------------------------------- the record of a generation


class Alternative(TypedDict):
    id: int
    label: str
    prob: float


class TokenRecord(TypedDict):
    """One drawn token of a generation's record."""

    id: int
    label: str  # readable (␣the, ↵)
    text: str  # as decoded
    prob: float  # after the sampling settings, when it was drawn
    surprisal_bits: float
    entropy_bits: float
    alternatives: list[Alternative]


class GenerationRecord(TypedDict):
    """A finished generation as plain data: what the page keeps (a gr.State), the coloured view, the
    timeline, a token's step, branching and the exports read. Made by :func:`generation_record`."""

    model: str
    precision: str
    prompt: str
    text: str
    prompt_ids: list[int]  # the prompt as the model read it
    settings: dict  # the sampling settings, the seed drawn with, max_new_tokens
    tokens: list[TokenRecord]


def generation_record(loaded: LoadedModel, prompt: str, update: GenerationUpdate, settings: dict
                      ) -> GenerationRecord:
    """Plain data about a finished generation (its final update) for the probability view and
    branching: no tensors, stamped with the model that generated it."""
    tok = loaded.tokenizer
    return {
        "model": loaded.name,
        "precision": loaded.precision,
        "prompt": prompt,
        "text": update.text,
        "prompt_ids": list(update.prompt_ids or []),
        "settings": settings,
        "tokens": [
            {"id": c.token_id, "label": display_token(tok, c.token_id), "text": str(tok.decode([c.token_id])),
             "prob": c.prob, "surprisal_bits": round(c.surprisal_bits, 4), "entropy_bits": round(c.entropy_bits, 4),
             "alternatives": [{"id": i, "label": display_token(tok, i), "prob": p} for i, p in c.alternatives]}
            for c in (update.chosen or [])
        ],
    }


TOKEN_COLUMNS = ("position", "token", "id", "probability", "surprisal_bits", "entropy_bits")


def record_rows(record: GenerationRecord) -> list[list]:
    """One row per generated token (the columns of :data:`TOKEN_COLUMNS`): what the coloured output and
    the surprise timeline show, for an export."""
    return [[i + 1, t.get("label", ""), t.get("id"), t.get("prob"), t.get("surprisal_bits"), t.get("entropy_bits")]
            for i, t in enumerate(record.get("tokens") or [])]


def has_tokens(record) -> bool:
    """Whether a value from the page is a generation record with at least one token."""
    return isinstance(record, dict) and isinstance(record.get("tokens"), list) and bool(record["tokens"])


def check_record(record) -> GenerationRecord:
    """A generation record as the page keeps it, or ValidationError when there is none yet."""
    if not has_tokens(record):
        raise ValidationError("generate some text first: there is nothing to select or branch from yet")
    return record


def check_record_model(loaded: LoadedModel, record: GenerationRecord, precision: bool = True) -> None:
    """ValidationError unless the loaded model (and, with ``precision``, its precision: the numbers
    differ) is the one that generated ``record``."""
    same = record.get("model") == loaded.name
    if precision:
        same = same and record.get("precision", loaded.precision) == loaded.precision
    if not same:
        made = f"{str(record.get('model'))[:40]} ({str(record.get('precision'))[:8]})"
        raise ValidationError(f"that text was generated by {made}, but {loaded.name} ({loaded.precision}) is "
                              "loaded now: generate again first")


def branch_prompt(loaded: LoadedModel, record: GenerationRecord, position: int, token_id: int) -> str:
    """The prompt that continues a finished generation from another token: the original prompt, the
    generated text before ``position``, then ``token_id`` in place of the token that was drawn there.
    ``position`` and ``token_id`` are valid (see :func:`check_record` and ``check_index``)."""
    check_record_model(loaded, record, precision=False)
    prefix = [int(x["id"]) for x in record["tokens"][:position]]
    return str(record.get("prompt", "")) + loaded.decode(prefix + [token_id])
