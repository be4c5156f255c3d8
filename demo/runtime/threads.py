"""How many CPU threads torch uses for the model while the app serves. Knows nothing of Gradio.

A served stream shares the machine's cores with the server itself (Gradio's event loop, the queue,
each request's thread) while raw ``generate`` has them to itself, so leaving a core to the server
looked promising. Measured on 2 cores with a light client (``benchmarks/bench_generate.py --threads N``
and ``benchmarks/bench_classroom.py`` with GPT_EXPLORER_THREADS=N; the README's *Measured speed*),
one thread lost more than it gained: 16 streams got 320 against 351 tokens/s in all on the bundled
model and 80 against 125 on a GPT-2-small-size one, and one stream of the bundled model 77 against
124 tokens/s. So the policy is every core the process may use; ``GPT_EXPLORER_THREADS`` overrides it.
"""

from __future__ import annotations

import os

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
