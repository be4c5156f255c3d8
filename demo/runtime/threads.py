"""How many CPU threads torch uses for the model while the app serves, and which threads run it.
Knows nothing of Gradio.

**How many.** A served stream shares the machine's cores with the server itself (Gradio's event loop,
the queue, each request's thread) while raw ``generate`` has them to itself, so leaving a core to the
server looked promising. Measured on 2 cores with a light client (``benchmarks/bench_generate.py
--threads N`` and ``benchmarks/bench_classroom.py`` with GPT_EXPLORER_THREADS=N; the README's
*Measured speed*), one thread lost more than it gained. So the policy is every core the process may
use; ``GPT_EXPLORER_THREADS`` overrides it.

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
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def serving_threads(cores: int) -> int:
    """torch threads for serving on ``cores`` cores: all of them (see the module's measurements)."""
    return max(1, cores)


def apply(setting: int | None) -> int:
    """Set torch's CPU threads for serving (the operator's ``setting``, else the policy) and return
    the number (``app.py`` calls it once, before the model loads)."""
    n = setting or serving_threads(available_cores())
    torch.set_num_threads(n)
    return n


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
            done.set_result(context.run(fn, *args, **kwargs))
        except BaseException as exc:  # handed to the caller, which raises it
            done.set_exception(exc)

    thread = threading.Thread(target=run, name=f"{APART_PREFIX}-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join()
    return done.result()
