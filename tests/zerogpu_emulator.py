"""A stand-in for ZeroGPU's calling convention that computes in its workers, for in-process tests.

The real ``spaces`` package runs here too (tests/test_zerogpu_spaces.py), but only in a process of its
own: importing it in ZeroGPU mode patches torch for the whole process. This emulation lets the tests
of each tab's handlers run in the test process, and follows what the package (0.51) does:

* each ``spaces.GPU`` function has its own workers, forked from the app at a call that finds none
  idle: a call while another is running gets a new worker (the package asks the scheduler for a GPU,
  and a busy one means a new worker), a later call reuses an idle warm worker, which keeps the memory
  it was forked with;
* arguments are pickled to the worker and results pickled back, a generator's items one by one as
  they come;
* an exception in the worker reaches the caller as the same ``gr.Error`` when it is one, and as
  ``gr.Error(<exception class name>, title="ZeroGPU worker error")`` otherwise.

It records each call's booked duration (``durations``), the worker's pid (``pids``) and how long the
call took (``seconds``).
"""

from __future__ import annotations

import faulthandler
import inspect
import multiprocessing
import pickle
import sys
import threading
import time

import gradio as gr

_END = "end"


class FakeSpaces:
    def __init__(self):
        self.durations: list = []
        self.seconds: list[float] = []
        self.pids: list[int] = []
        self._lock = threading.Lock()
        self._idle: dict[int, list] = {}  # task index -> idle workers [(connection, process)]
        self._all: list = []
        self._tasks: list = []

    def GPU(self, task=None, *, duration=None, size=None):  # the package's name and arguments
        if task is None:
            return lambda fn: self.GPU(fn, duration=duration, size=size)
        index = len(self._tasks)
        self._tasks.append(task)

        def book(args, kwargs):
            self.durations.append(duration(*args, **kwargs) if callable(duration) else (duration or 60))

        if inspect.isgeneratorfunction(task):
            def stream(*args, **kwargs):
                book(args, kwargs)
                yield from self._run(index, args, kwargs)
            return stream

        def call(*args, **kwargs):
            book(args, kwargs)
            (result,) = self._run(index, args, kwargs)  # one item, then the end
            return result
        return call

    @property
    def calls(self) -> int:
        return len(self.seconds)

    def _worker(self, index):
        with self._lock:
            idle = self._idle.setdefault(index, [])
            while idle:
                conn, proc = idle.pop()
                if proc.is_alive():
                    return conn, proc
        ctx = multiprocessing.get_context("fork")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=self._serve, args=(self._tasks[index], child), daemon=True)
        proc.start()
        with self._lock:
            self._all.append((conn, proc))
        return conn, proc

    def _run(self, index, args, kwargs):
        payload = pickle.dumps((args, kwargs))  # what the package does: an unpicklable argument fails here
        conn, proc = self._worker(index)
        t0 = time.perf_counter()
        conn.send_bytes(payload)
        try:
            while True:
                kind, value = pickle.loads(conn.recv_bytes())
                if kind == "error":
                    raise value
                if kind == _END:
                    break
                yield value
        finally:
            self.seconds.append(time.perf_counter() - t0)
            self.pids.append(proc.pid)
        with self._lock:
            self._idle[index].append((conn, proc))  # warm for a later call

    @staticmethod
    def _serve(task, conn):
        def send(kind, value=None):
            try:
                data = pickle.dumps((kind, value))
            except Exception as exc:
                data = pickle.dumps(("error", gr.Error(f"the result does not pickle: {exc}")))
            conn.send_bytes(data)

        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except EOFError:
                return
            if message is None:  # the app closes its workers
                return
            args, kwargs = message
            faulthandler.dump_traceback_later(60, file=sys.__stderr__)  # a call that hangs shows where
            try:
                if inspect.isgeneratorfunction(task):
                    for item in task(*args, **kwargs):
                        send("ok", item)
                else:
                    send("ok", task(*args, **kwargs))
            except Exception as exc:  # sent back and raised in the caller, as the package does
                send("error", exc if isinstance(exc, gr.Error) else
                     gr.Error(type(exc).__name__, title="ZeroGPU worker error", print_exception=False))
                continue
            finally:
                faulthandler.cancel_dump_traceback_later()
            send(_END)

    def close(self):
        for conn, proc in self._all:
            try:
                conn.send_bytes(pickle.dumps(None))
                conn.close()
            except OSError:
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._all.clear()
        self._idle.clear()
