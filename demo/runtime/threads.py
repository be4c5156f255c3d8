"""How many CPU threads torch uses for the model while the app serves, and which threads run it.
Knows nothing of Gradio.

**How many.** A served stream shares the machine's cores with the server itself (Gradio's event loop,
the queue, each request's thread) while raw ``generate`` has them to itself. Measured on 2 cores with
a light client (``benchmarks/bench_generate.py`` and ``benchmarks/bench_classroom.py``; the README's
*Measured speed*), no single count was best: one stream decoded faster with 1 thread on one machine
and with 2 on another, and a class of 16 went faster with 2 on both, while loads and analysis passes
(long prompts, every layer's attention) gain from every core. So model work outside the decode loops
runs on every core the process may use, and each decode loop on a CPU times its own passes and runs
each size of batch at the count that proved faster (:class:`PassThreads`).
``GPT_EXPLORER_THREADS`` fixes one count for everything instead.

**Which threads.** torch's CPU kernels run on OpenMP (GNU libgomp in the PyPI wheels). libgomp gives
every thread that runs a parallel region a team of worker threads of its own, kept for as long as
that thread lives, and its workers spin for a while (300,000 turns) after each region so that the
next one starts at once. But when the process holds more OpenMP threads than it has cores, libgomp
cuts that spin to 100 turns for every team: each of the many small regions of a forward pass then
wakes its workers from sleep. A model loaded at start-up in the main thread (which lives as long as
the app) and a decode loop in another thread were enough for that on 2 cores: a served stream of the
bundled model at 93 tokens/s against 207 for raw ``generate`` (45 %, medians of 15 rounds; 87 % with
this module's rule and the paced updates of :mod:`demo.runtime.generation`, README *Measured speed*).
So model work outside the decode loops (loads, analysis passes) runs in a short-lived thread of its
own (:func:`run_apart`), whose team ends with it; each decode loop's thread ends when its last
generation does.
"""

from __future__ import annotations

import contextvars
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("gpt_explorer")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def serving_threads(cores: int) -> int:
    """torch threads for serving on ``cores`` cores: all of them (see the module's measurements)."""
    return max(1, cores)


class _Policy:
    """What :func:`apply` set: the thread count of loads, analysis passes and prompt reading, and
    whether the decode loops choose their own count pass by pass (:class:`PassThreads`)."""

    count: int | None = None  # None until apply (tests, tools): torch's count at the time
    tuned = False


POLICY = _Policy()


def apply(setting: int | None) -> int:
    """Set torch's CPU threads for serving (the operator's ``setting``, else the policy) and return
    the number (``app.py`` calls it once, before the model loads). Without a setting, each decode
    loop on a CPU times its passes and runs each with the count that proved faster (:class:`PassThreads`)."""
    n = setting or serving_threads(available_cores())
    torch.set_num_threads(n)
    POLICY.count, POLICY.tuned = n, setting is None
    return n


def serving_count() -> int:
    """The thread count of model work outside a decode pass (and the most a decode pass uses)."""
    return POLICY.count or torch.get_num_threads()


def use_serving_count() -> None:
    """Give the calling thread the serving count. torch keeps a count per thread, and a new thread
    takes the count last set anywhere, which may be a decode loop's choice for its own passes. (It
    takes it at its first torch call, which may overwrite a count set before it: hence the reading
    first, here and in :meth:`PassThreads.start`.)"""
    n = serving_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class PassThreads:
    """The torch thread count of each decode pass of one decode loop on a CPU, chosen by timing the
    loop: for each size of batch (1 row, 2–3, 4–7, …), blocks of :attr:`BLOCK` passes at each
    candidate count in turn, :attr:`ROUNDS` rounds, then the count with the shortest median period
    until :attr:`STANDS_S` have passed, when that size is timed again (the load on the machine
    changes). A pass's period runs from its start to the next pass's start: the model, choosing the
    tokens, handing them on and whatever the server's other threads take from the loop meanwhile.

    Why measure: on 2 cores one stream of the bundled model decoded faster with 1 thread than with 2
    on one machine and slower on another, while 16 streams went faster with 2 on both (README
    *Measured speed*, CPU threads). torch keeps the count per thread, so a choice here changes only
    the decode loop's thread. The pass after a change is not timed (the OpenMP team resizes), nor one
    followed by other work (reading new prompts); a size none of whose passes could be timed gets
    every core."""

    BLOCK = 4
    ROUNDS = 3
    STANDS_S = 30.0

    def __init__(self, most: int, clock: Callable[[], float] = time.perf_counter):
        self.counts = sorted({1 << i for i in range(most.bit_length()) if 1 << i < most} | {max(1, most)})
        self.most = self.counts[-1]
        self._clock = clock
        self._sizes: dict[int, _Size] = {}
        self._current = torch.get_num_threads()
        self._timing: tuple[_Size, int, float] | None = None  # the pass under way, if it is timed

    def start(self) -> None:
        """At the start of a decode loop's thread (each has its own count); the choices made stand."""
        self._current, self._timing = torch.get_num_threads(), None

    def chosen(self, rows: int) -> int | None:
        """The count chosen for ``rows`` rows (None while it is being measured)."""
        size = self._sizes.get(rows.bit_length())
        return size.chosen if size else None

    def begin(self, rows: int) -> None:
        """At the start of a decode pass of ``rows`` rows: the last pass's period counts towards its
        size's measurement, and this pass gets its count."""
        now = self._clock()
        if self._timing is not None:
            last, count, started = self._timing
            if last.chosen is None:
                last.times.setdefault(count, []).append(now - started)
        size = self._sizes.setdefault(rows.bit_length(), _Size(rows=1 << (rows.bit_length() - 1)))
        if size.chosen is not None and now - size.chosen_at >= self.STANDS_S:
            size.chosen, size.times, size.passes = None, {}, 0  # measured again
        if size.chosen is None and size.passes >= self.ROUNDS * len(self.counts) * self.BLOCK:
            self._choose(size, now)
        measuring = size.chosen is None and len(self.counts) > 1
        if measuring:  # blocks of passes at each count in turn; a pass not timed still takes its place
            count = self.counts[(size.passes // self.BLOCK) % len(self.counts)]
            size.passes += 1
        else:
            count = size.chosen or self.counts[0]
        changed = self._set(count)
        self._timing = (size, count, now) if measuring and not changed else None

    def full(self) -> None:
        """Before other work of the loop's thread (reading prompts): every serving thread."""
        self._set(self.most)
        self._timing = None

    def _choose(self, size: _Size, now: float) -> None:
        """The count with the shortest median period; every core if no pass could be timed (new
        prompts read before each one)."""
        medians = {c: statistics.median(t) for c, t in size.times.items() if t}
        size.chosen, size.chosen_at = (min(medians, key=medians.__getitem__) if medians else self.most), now
        if size.chosen != size.last:  # the first choice of a size, then (debug) each change
            label = str(size.rows) if size.rows == 1 else f"{size.rows}-{2 * size.rows - 1}"
            log.log(logging.INFO if size.last is None else logging.DEBUG,
                    "decode passes of %s row(s): %d torch thread(s) (median period %s)", label, size.chosen,
                    ", ".join(f"{c} threads {m * 1000:.2f} ms" for c, m in sorted(medians.items())) or "none timed")
            size.last = size.chosen

    def _set(self, count: int) -> bool:
        """Give the loop's thread ``count`` threads; whether that changed its count."""
        if count == self._current:
            return False
        torch.set_num_threads(count)
        self._current = count
        return True


@dataclass
class _Size:
    """One batch size's measurement (times by count) and choice."""

    times: dict[int, list[float]] = field(default_factory=dict)
    passes: int = 0  # passes run while measuring
    chosen: int | None = None
    chosen_at: float = 0.0
    last: int | None = None  # the choice before (a change is logged)
    rows: int = 0  # the smallest batch of this size


def pass_threads_for(device: str) -> PassThreads | None:
    """A decode loop's chooser of thread counts: on a CPU when the policy tunes (no operator setting)."""
    if device != "cpu" or not POLICY.tuned:
        return None
    return PassThreads(serving_count())


APART_PREFIX = "gpt-explorer-apart"  # the short-lived threads of run_apart


def run_apart(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in a short-lived thread of its own, with the caller's context variables
    (the visitor's session, Gradio's request context): its result, or the exception it raised, raised
    here. The caller waits for it. The thread, and the OpenMP team its torch calls made, end with the
    call (see the module's docstring)."""
    context = contextvars.copy_context()
    done: Future = Future()

    def run() -> None:
        try:
            use_serving_count()
            done.set_result(context.run(fn, *args, **kwargs))
        except BaseException as exc:  # handed to the caller, which raises it
            done.set_exception(exc)

    thread = threading.Thread(target=run, name=f"{APART_PREFIX}-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join()
    return done.result()
