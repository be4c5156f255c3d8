"""Model work on ZeroGPU hardware (Hugging Face's shared GPUs, the ``spaces`` package).

ZeroGPU gives the app's process no GPU. Importing ``spaces`` (in the main thread, before CUDA is
touched) puts torch in an emulation mode, *in that thread only*: a model moved to ``cuda`` there keeps
its weights in host memory behind tensors that say ``cuda``. At launch the package packs those
weights to disk. Each ``spaces.GPU`` call then books a GPU for a declared duration and runs in a worker
process forked from the app, which moves every emulated weight (packed or loaded since) onto the real
GPU; a worker stays warm for later calls while the scheduler reports its GPU idle, and a call that
finds it busy gets a new worker. Five rules follow:

1. **Every load runs in the emulation thread** (:class:`HomeThread`). Gradio handles events in worker
   threads, where a load to ``cuda`` would reach the real CUDA start-up, which the package replaces
   with an error. ``app.py`` keeps the main thread serving the loads asked for after launch (a visitor's
   *Load model*, a link that names a model, the 8-bit comparison's second precision). transformers'
   threaded weight loading is turned off for the same reason (``HF_DEACTIVATE_ASYNC_LOAD``).
2. **Arguments and results cross a process boundary as pickles**: a task takes and returns plain
   values; a model is sent as its key (:class:`WorkerModel`) and taken from the worker's copy of the pool.
3. **A warm worker keeps the pool it was forked with.** A worker forked after a load has the model (the
   package moves it); a warm one forked before loads it from the local disk cache, which the parent
   filled. Each call reports which models its worker holds, so a call books load time only when a
   live worker may lack its model, sized to the model (:func:`load_allowance`).
4. **Bookings fit a visitor's quota**: ZeroGPU refuses a call that books more than the visitor has left
   (120 s a day for anonymous visitors, 300 s for free accounts) and newer nodes count a booking up to
   1.5 times. No call books more than :data:`MAX_BOOKING_S` (60 s, so at most 90 s counted).
5. torch's CPU thread pool does not survive a fork: the worker sets one thread before any torch work.

Generation runs in slices of about a second (:data:`SLICE_S`), each one call, so a Stop or a closed
tab frees the GPU within a slice whatever the worker does with a generator it was given.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("gpt_explorer")
PARENT_PID = os.getpid()
MAX_BOOKING_S = 60  # the most any call books (x1.5 on newer nodes: 90 s, within an anonymous visitor's 120 s)
# attention, next token, logit lens, the 8-bit comparison: one or two forward passes, well under a second
# on an H200 slice even for gpt2-xl; the rest covers a new worker's start (fork, CUDA start, moving the
# pool's weights to the GPU: a few seconds for the catalogue's models). Not yet measured on ZeroGPU.
ANALYSIS_S = 20
# A warm worker that lacks a model loads it from the local disk cache: a fixed start plus the weights at
# a conservative 250 MB/s (disk to GPU), e.g. 6 s for GPT-2 small in fp32, 29 s for gpt2-xl in fp32.
LOAD_BASE_S = 5
LOAD_BYTES_PER_S = 250 * 2**20
SLICE_S = 1.0  # generation time per slice
SLICE_OVERHEAD_S = 10  # a slice's booking beyond its generation time: a new worker's start, reading the text
FIRST_SLICE_TOKENS = 16  # before the model's speed is measured
MAX_SLICE_TOKENS = 256


class HomeThread:
    """The thread that imported ``spaces``, where the package's CUDA emulation is active. :meth:`call`
    runs a function there: directly when called from it, else handed over and waited for (in the
    caller's context variables, so Gradio's progress reaches the caller's page). The thread takes work
    while it runs :meth:`serve` (``app.py`` does after launch); work handed over before that waits."""

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        if threading.get_ident() == self.ident:
            return fn(*args, **kwargs)
        if self.closed:
            raise RuntimeError("the app is shutting down")
        done: Future = Future()
        self._jobs.put((done, contextvars.copy_context(), fn, args, kwargs))
        return done.result()

    def serve(self) -> None:
        """Run the work handed over until :meth:`close` (or an interrupt, which propagates)."""
        if threading.get_ident() != self.ident:
            raise RuntimeError("HomeThread.serve must run in the thread that imported spaces")
        try:
            while (job := self._jobs.get()) is not None:
                done, context, fn, args, kwargs = job
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(context.run(fn, *args, **kwargs))
                    except BaseException as exc:  # handed to the caller, which raises it
                        done.set_exception(exc)
        finally:
            self.closed = True
            self._fail_waiting()

    def close(self) -> None:
        self.closed = True
        self._jobs.put(None)

    def _fail_waiting(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job[0].set_running_or_notify_cancel():
                job[0].set_exception(RuntimeError("the app is shutting down"))


def prepare_app() -> HomeThread | None:
    """In the app's main thread on ZeroGPU, before a model loads. Import ``spaces``, which sets up its
    CUDA emulation in this thread (so the app sees a GPU and loads for it) and must come before CUDA is
    initialised; turn off transformers' threaded weight loading, whose threads would be outside the
    emulation. Run torch single-threaded: a fork copies a thread pool's locks but not its threads, and a
    pool that was busy when a worker was forked leaves that worker's first CPU matmul waiting forever
    (seen on this CPU). The app's process does little torch work there: the model runs in the workers.
    Returns the :class:`HomeThread` that loads must run in, or None when ``spaces`` is not installed
    (the app then runs on the CPU, and says so)."""
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"  # set, never read, here: transformers reads it at each load
    torch.set_num_threads(1)
    try:
        import spaces  # noqa: F401
    except ImportError:
        return None
    return HomeThread()


MISSING_SPACES = ("This Space is on ZeroGPU hardware (SPACES_ZERO_GPU is set) but the `spaces` package is not "
                  "installed, so the model runs on the CPU. Add `spaces` to the Space's requirements.txt "
                  "(python -m demo.deploy does) to use the GPU.")


def prepare_worker(manager=None) -> None:
    """In a process forked from the app: one torch thread (its thread pool does not survive a fork),
    and a manager fit for the worker (fresh locks; loads run here, on this process's device)."""
    if os.getpid() == PARENT_PID:
        return
    torch.set_num_threads(1)
    if manager is not None:
        manager.after_fork()


@dataclass(frozen=True)
class WorkerModel:
    """A model as a task's argument: its pool key (the worker takes the model from its own pool) and
    its size (what loading it there would take)."""

    name: str
    precision: str
    nbytes: int

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.precision


def load_allowance(nbytes: int) -> int:
    """Seconds a warm worker may need to load a model of ``nbytes`` from the local disk cache."""
    return math.ceil(LOAD_BASE_S + nbytes / LOAD_BYTES_PER_S)


def _as_worker_model(value):
    from demo.runtime.loading import LoadedModel

    if isinstance(value, LoadedModel):
        return WorkerModel(value.name, value.precision, value.memory_bytes)
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process took the number
        return False
    return True


def worker_model(manager, key: tuple[str, str]):
    """The model ``key`` names in this worker's copy of the pool (loaded if this worker lacks it)."""
    return manager.get(key) or manager.load(*key)


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
    """``fn(loaded, *args)`` (a function, not a generator) as a ZeroGPU task. On the caller's side each
    loaded model among the arguments travels as a :class:`WorkerModel`; the worker's side prepares the
    process, takes those models from its copy of the pool (loading one it lacks), runs ``fn`` and reports
    the models its pool holds. ``duration``: seconds, or a function of ``fn``'s other arguments (models
    as :class:`WorkerModel`); a call whose model a live worker of this task may lack books
    :func:`load_allowance` more, and no call books more than :data:`MAX_BOOKING_S`. ``errors`` turns an
    exception in the worker into the one the caller sees (ZeroGPU passes only Gradio's own errors on
    with their message)."""
    if spaces_module is None:
        import spaces

        spaces_module = spaces
    name = getattr(fn, "__qualname__", repr(fn))
    workers: dict[int, frozenset] = {}  # worker pid -> the models its pool held at its last call
    seen = threading.Lock()

    def may_lack(key) -> bool:
        with seen:
            for pid in [p for p in workers if not _alive(p)]:
                del workers[pid]
            # no live worker: the next call forks one from this process, whose pool has the model
            return any(key not in held for held in workers.values())

    def booked(*args, **kwargs) -> int:
        models = [a for a in (*args, *kwargs.values()) if isinstance(a, WorkerModel)]
        seconds = duration(*args[1:], **kwargs) if callable(duration) else duration
        loads = sum(load_allowance(m.nbytes) for m in dict.fromkeys(models) if may_lack(m.key))
        booking = min(MAX_BOOKING_S, int(seconds + loads))
        log.info("ZeroGPU: %s books %d s%s", name, booking, f" (a warm worker may load its model: {loads} s)"
                 if loads else "")
        return booking

    def in_worker(*args, **kwargs):
        try:
            prepare_worker(manager)
            resolve = lambda v: worker_model(manager, v.key) if isinstance(v, WorkerModel) else v
            result = fn(*[resolve(a) for a in args], **{k: resolve(v) for k, v in kwargs.items()})
            return result, os.getpid(), frozenset(manager.keys())
        except Exception as exc:
            raise errors(exc) from exc

    task = spaces_module.GPU(in_worker, duration=booked)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        result, pid, held = task(*[_as_worker_model(a) for a in args],
                                 **{k: _as_worker_model(v) for k, v in kwargs.items()})
        with seen:
            workers[pid] = held
        return result

    return call
