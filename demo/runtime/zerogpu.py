"""Model work on ZeroGPU hardware (Hugging Face's shared GPUs, the ``spaces`` package).

ZeroGPU runs each ``spaces.GPU`` function in a worker process forked from the app, books a GPU for
the duration the call declares, and keeps warm workers for later calls. Four rules follow, and
:func:`gpu_task` applies them to any function that runs the model:

1. Arguments and results cross a process boundary as pickles: a task takes and returns plain values
   (texts, numbers, dicts, numpy arrays, figures), never the model manager or a lock.
2. A warm worker keeps the memory it was forked with, models included: each call carries the key
   (name, precision) of the model the visitor uses, and the worker loads that model if it lacks it,
   so a visitor's model switch is seen by their later calls (and books time for that load).
3. torch's CPU thread pool does not survive a fork: the worker sets one thread before any torch work.
4. A call books the GPU for its declared duration (the default is 60 s, which lowers a visitor's
   queue priority and aborts longer work): each task declares a duration fitted to its work.

Generation runs in slices of about a second (:data:`SLICE_S`), each one call, so a Stop or a closed
tab frees the GPU within a slice whatever the worker does with a generator it was given.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch

PARENT_PID = os.getpid()
ANALYSIS_S = 20  # attention, next token, logit lens: one forward pass
MODEL_LOAD_S = 120  # added to a call whose model this task has not run yet: the worker may load it
SLICE_S = 1.0  # generation time per slice
SLICE_OVERHEAD_S = 10  # a slice's booking beyond its generation time: reading the text, a model switch
FIRST_SLICE_TOKENS = 16  # before the model's speed is measured
MAX_SLICE_TOKENS = 256


def prepare_app() -> None:
    """In the app's own process on ZeroGPU, before a model loads. Import ``spaces``, which sets up its
    CUDA emulation (so the app sees a GPU and loads for it) and must come before CUDA is initialised.
    Run torch single-threaded: a fork copies a thread pool's locks but not its threads, and a pool
    that was busy when a worker was forked leaves that worker's first CPU matmul waiting forever (seen
    on this CPU). The app's process does little torch work there: the model runs in the workers."""
    with contextlib.suppress(ImportError):
        import spaces  # noqa: F401
    torch.set_num_threads(1)


def prepare_worker(manager=None) -> None:
    """In a process forked from the app: one torch thread (its thread pool does not survive a fork),
    and fresh locks for the model manager (a lock the app held at the fork would never be released
    here: only the forking thread exists in the child)."""
    if os.getpid() == PARENT_PID:
        return
    torch.set_num_threads(1)
    if manager is not None:
        manager.after_fork()


def worker_model(manager, key: tuple[str, str]):
    """The model ``key`` names in this worker's copy of the pool (loaded if this worker lacks it)."""
    return manager.load(*key)


def slice_tokens(tokens_per_s: float | None, remaining: int) -> int:
    """How many tokens the next slice may generate: about :data:`SLICE_S` at the measured speed."""
    n = FIRST_SLICE_TOKENS if not tokens_per_s else int(tokens_per_s * SLICE_S)
    return max(1, min(remaining, MAX_SLICE_TOKENS, max(n, 1)))


def slice_duration(tokens: int, tokens_per_s: float | None) -> int:
    """Seconds to book for a slice of ``tokens`` tokens at the measured speed (generously, since a
    slice also reads the whole text again)."""
    seconds = tokens / tokens_per_s if tokens_per_s else SLICE_S
    return int(SLICE_OVERHEAD_S + 2 * min(seconds, 2 * SLICE_S))


def gpu_task(fn: Callable, manager, duration: int | Callable = ANALYSIS_S, spaces_module=None,
             errors: Callable[[Exception], Exception] = lambda exc: exc) -> Callable:
    """``fn(loaded, *args)`` (a function, not a generator) as a ZeroGPU task. The caller's side sends the
    loaded model's key (name, precision) instead of the model, and ``fn``'s other arguments (they must
    pickle); the worker's side prepares the process, takes that model from its copy of the pool
    (loading it if it lacks it), then runs ``fn``. ``duration``: seconds, or a function of ``fn``'s
    other arguments; a call whose model differs from the one this task last ran books
    :data:`MODEL_LOAD_S` more (the worker may load it). ``errors`` turns an exception in the worker into
    the one the caller sees (ZeroGPU passes only Gradio's own errors on with their message)."""
    if spaces_module is None:
        import spaces

        spaces_module = spaces
    last_key: list = [None]

    def booked(key, *args, **kwargs):
        seconds = duration(*args, **kwargs) if callable(duration) else duration
        return seconds + (MODEL_LOAD_S if key != last_key[0] else 0)

    def in_worker(key, *args, **kwargs):
        try:
            prepare_worker(manager)
            return fn(worker_model(manager, key), *args, **kwargs)
        except Exception as exc:
            raise errors(exc) from exc

    task = spaces_module.GPU(in_worker, duration=booked)

    @functools.wraps(fn)
    def call(loaded, *args, **kwargs):
        key = (loaded.name, loaded.precision)
        result = task(key, *args, **kwargs)
        last_key[0] = key
        return result

    return call
