"""Streamed generation, the record of the tokens it drew, and branching from a token. No Gradio.

Each generation runs ``model.generate`` in a worker thread feeding a ``TextIteratorStreamer``;
closing the :func:`stream_generate` generator (a Stop, a closed tab, a cancelled API call) sets an
event that a stopping criterion checks at every step, and joins the thread. The final update
carries every drawn token with its probability and alternatives; :func:`generation_record` turns
that into plain data for the probability-coloured view, and :func:`branch_prompt` continues a
finished generation from another token.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .backend import LoadedModel
from .errors import ValidationError
from .sampling import MAX_NEW_TOKENS, ChosenToken, SamplingParams, TokenChooser, build_processors, resolve_seed
from .tokens import display_token
from .validation import check_text, encode_text

THREAD_PREFIX = "gpt-explorer-generate"
_thread_ids = itertools.count(1)


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


class _TokenStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that releases text token by token rather than word by word, holding back
    only an incomplete multi-byte character, and counts and times the generated tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_tokens = 0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def put(self, value):
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.n_tokens += int(value.numel())
        self.t_last = time.perf_counter()
        if self.t_first is None:
            self.t_first = self.t_last
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return  # the rest of a multi-byte character is still to come
        printable, self.print_len = text[self.print_len:], len(text)
        if text.endswith("\n"):  # keep re-decoding cheap on long texts
            self.token_cache, self.print_len = [], 0
        self.on_finalized_text(printable)


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def prepare_prompt(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
    """Token ids of the prompt, keeping the most recent tokens so prompt + new tokens fit the
    context window. Returns (ids, number of tokens dropped from the start)."""
    ctx = loaded.context_length
    if max_new_tokens >= ctx:
        raise ValidationError(f"max_new_tokens must be below this model's context window of {ctx} tokens")
    enc = encode_text(loaded.tokenizer, prompt, name="prompt", limit=ctx - max_new_tokens, keep="last")
    return list(enc.ids), enc.dropped


def live_generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


def stream_generate(loaded: LoadedModel, request: GenerationRequest, poll_s: float = 0.05
                    ) -> Iterator[GenerationUpdate]:
    """Stream a generation as growing text. Close the generator to stop the model (within a step)."""
    t0 = time.perf_counter()
    params = resolve_seed(request.sampling) if request.sampling.do_sample else request.sampling
    ids, dropped = prepare_prompt(loaded, request.prompt, request.max_new_tokens)
    tok = loaded.tokenizer
    input_ids = torch.tensor([ids], device=loaded.model.device)
    streamer = _TokenStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=poll_s)
    stop = threading.Event()
    chooser = TokenChooser(params.do_sample, params.seed)
    processors = build_processors(params)
    processors.append(chooser)
    error: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                loaded.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=request.max_new_tokens,
                    do_sample=False, num_beams=1, temperature=None, top_k=None, top_p=None, logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), streamer=streamer,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                )
        except BaseException as exc:
            error.append(exc)
            streamer.end()

    def update(text: str, **kw) -> GenerationUpdate:
        now = time.perf_counter()
        n = streamer.n_tokens
        rate = None
        if n >= 2 and streamer.t_last and streamer.t_first and streamer.t_last > streamer.t_first:
            rate = (n - 1) / (streamer.t_last - streamer.t_first)
        ttft = streamer.t_first - t0 if streamer.t_first else None
        return GenerationUpdate(text=text, n_tokens=n, elapsed_s=now - t0, ttft_s=ttft, tokens_per_s=rate,
                                prompt_tokens=len(ids), truncated_tokens=dropped, seed=params.seed, **kw)

    thread = threading.Thread(target=work, name=f"{THREAD_PREFIX}-{next(_thread_ids)}", daemon=True)
    thread.start()
    text = ""
    try:
        while True:
            try:
                piece = next(streamer)
            except StopIteration:
                break
            except queue.Empty:
                if not thread.is_alive() and streamer.text_queue.empty():
                    break
                continue
            if piece:
                text += piece
                yield update(text)
        thread.join()
        if error:
            raise RuntimeError(f"generation failed: {type(error[0]).__name__}: {error[0]}") from error[0]
        last = chooser.chosen[-1].token_id if chooser.chosen else None
        reason = "end of text" if last is not None and last == tok.eos_token_id else "length"
        yield update(text, done=True, stop_reason=reason, chosen=chooser.chosen, prompt_ids=ids)
    finally:
        stop.set()  # also reached on GeneratorExit: a closed stream stops the model
        thread.join(timeout=5)


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
    processors = build_processors(params)
    processors.append(chooser)
    tok = loaded.tokenizer
    input_ids = torch.tensor([state.prompt_ids + state.generated], device=loaded.model.device)
    clock = _StopAfter(max_seconds)
    t0 = time.perf_counter()
    with torch.inference_mode():
        loaded.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=min(max_tokens, remaining),
            do_sample=False, num_beams=1, temperature=None, top_k=None, top_p=None, logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([clock]),
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = [c.token_id for c in chooser.chosen]
    generated = state.generated + new
    ended = bool(new) and new[-1] == tok.eos_token_id
    done = ended or len(generated) >= request.max_new_tokens
    return replace(state, generated=generated, chosen=state.chosen + chooser.chosen, rng_state=chooser.state(),
                   done=done, stop_reason=("end of text" if ended else "length") if done else None,
                   first_token_s=state.first_token_s if state.first_token_s is not None or not clock.first
                   else clock.first - t0,
                   decode_s=state.decode_s + ((clock.last - clock.first) if clock.first else 0.0),
                   decode_tokens=state.decode_tokens + max(0, len(new) - 1))


def slice_update(loaded: LoadedModel, state: SliceState, started: float) -> GenerationUpdate:
    """What the page shows after a slice (the final update once the generation is done)."""
    text = loaded.tokenizer.decode(state.generated, skip_special_tokens=True)
    return GenerationUpdate(
        text=text, n_tokens=len(state.generated), elapsed_s=time.perf_counter() - started,
        ttft_s=state.first_token_s, tokens_per_s=state.tokens_per_s, prompt_tokens=len(state.prompt_ids),
        truncated_tokens=state.dropped, seed=state.seed, done=state.done, stop_reason=state.stop_reason,
        chosen=state.chosen if state.done else None, prompt_ids=state.prompt_ids if state.done else None)


# ----------------------------------------------------------------------------- the record of a generation


def generation_record(loaded: LoadedModel, prompt: str, update: GenerationUpdate, settings: dict) -> dict:
    """Plain data about a finished generation (its final update) for the probability view and
    branching: no tensors, stamped with the model that generated it."""
    tok = loaded.tokenizer
    return {
        "model": loaded.name,
        "prompt": prompt,
        "text": update.text,
        "prompt_ids": list(update.prompt_ids or []),
        "settings": settings,
        "tokens": [
            {"id": c.token_id, "label": display_token(tok, c.token_id), "text": tok.decode([c.token_id]),
             "prob": c.prob,
             "alternatives": [{"id": i, "label": display_token(tok, i), "prob": p} for i, p in c.alternatives]}
            for c in (update.chosen or [])
        ],
    }


def has_tokens(record) -> bool:
    """Whether a value from the page is a generation record with at least one token."""
    return isinstance(record, dict) and isinstance(record.get("tokens"), list) and bool(record["tokens"])


def check_record(record) -> dict:
    """A generation record as the page keeps it, or ValidationError when there is none yet."""
    if not has_tokens(record):
        raise ValidationError("generate some text first: there is nothing to select or branch from yet")
    return record


def branch_prompt(loaded: LoadedModel, record: dict, position: int, token_id: int) -> str:
    """The prompt that continues a finished generation from another token: the original prompt, the
    generated text before ``position``, then ``token_id`` in place of the token that was drawn there.
    ``position`` and ``token_id`` are valid (see :func:`check_record` and ``check_index``)."""
    if record.get("model") != loaded.name:
        raise ValidationError(f"that text was generated by {str(record.get('model'))[:40]!r}, but {loaded.name!r} "
                              "is loaded now: generate again first")
    prefix = [int(x["id"]) for x in record["tokens"][:position]]
    return str(record.get("prompt", "")) + loaded.decode(prefix + [token_id])
