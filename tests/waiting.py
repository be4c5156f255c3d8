"""Waiting on conditions, never on the clock: what the tests use instead of sleeps and short deadlines.

A busy machine can make anything slow, so a test never asserts that something happened within N
seconds, nor that a stream delivered N updates. It waits for a condition with a generous ceiling
(:data:`CEILING_S`, there only so that a real hang fails instead of blocking the suite), and where it
needs "the model is still running" it makes that a state it controls: a :class:`ModelGate` holds the
model's forward pass until the test releases it.
"""

from __future__ import annotations

import threading
import time

CEILING_S = 120.0  # how long a condition may take before the test calls it a hang


def wait_until(predicate, timeout_s: float = CEILING_S, interval_s: float = 0.01) -> bool:
    """Whether ``predicate()`` became true before the ceiling (checked every ``interval_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


class ModelGate:
    """Holds a model's forward passes from the ``hold_at``-th one (counted from when the gate is set
    up) until :meth:`release`: while held, a generation is mid-way by construction, whatever the
    machine's speed. Use as a context manager (the hook goes away and the gate opens at the end).

    ``calls`` counts every forward pass that started, so a test can also check that the model ran no
    further after a Stop (the held pass finishes when released; a stopped row gets no token from it).
    """

    def __init__(self, model, hold_at: int | None = None):
        self.model, self.hold_at = model, hold_at
        self.calls = 0
        self._lock = threading.Lock()
        self._held = threading.Event()  # a pass waits at the gate
        self._gate = threading.Event()  # set: the passes held so far go on
        self._handle = None

    def __enter__(self) -> ModelGate:
        self._handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        if self._handle is not None:
            self._handle.remove()

    def _hook(self, module, args) -> None:
        with self._lock:
            self.calls += 1
            gate = self._gate if self.hold_at is not None and self.calls >= self.hold_at else None
            if gate is not None:
                self._held.set()
        if gate is not None:
            gate.wait(CEILING_S)  # the ceiling only keeps a broken test from hanging the suite

    def hold(self, after: int = 0) -> None:
        """Let the pass held now go on, and hold the one that comes ``after`` passes later."""
        with self._lock:
            old, self._gate, self._held = self._gate, threading.Event(), threading.Event()
            self.hold_at = self.calls + after + 1
        old.set()

    def wait_held(self, timeout_s: float = CEILING_S) -> bool:
        """Whether the model reached the held forward pass (and waits there)."""
        return self._held.wait(timeout_s)

    @property
    def held(self) -> bool:
        return self._held.is_set() and not self._gate.is_set()

    def release(self) -> None:
        """Let every pass go on, now and later."""
        with self._lock:
            self.hold_at = None
            self._gate.set()
