"""A stand-in for ZeroGPU's calling convention, for tests on a machine without it.

On ZeroGPU hardware ``spaces.GPU`` runs a function in a worker process forked from the app: the
call's arguments are pickled to the worker and the result pickled back; the worker stays warm for
later calls of that function and keeps the memory it was forked with; an exception in the worker
reaches the caller with its message only when it is a ``gr.Error`` (anything else becomes a bare
"ZeroGPU worker error"). This emulation does the same, one forked worker per function, and takes
the worst case for generators: the worker runs a generator to its end before anything comes back.
It records each call's declared duration and how long the worker took.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import time

import gradio as gr


class FakeSpaces:
    def __init__(self):
        self.tasks = []
        self.durations: list = []
        self.seconds: list[float] = []
        self._workers: dict[int, tuple] = {}  # task index -> (connection, process)

    def GPU(self, task=None, *, duration=None):  # the name spaces uses
        if task is None:
            return lambda fn: self.GPU(fn, duration=duration)
        index = len(self.tasks)
        self.tasks.append(task)

        def book(args, kwargs):
            self.durations.append(duration(*args, **kwargs) if callable(duration) else duration)

        if inspect.isgeneratorfunction(task):
            def stream(*args, **kwargs):
                book(args, kwargs)
                yield from self._run(index, args, kwargs)
            return stream

        def call(*args, **kwargs):
            book(args, kwargs)
            return self._run(index, args, kwargs)
        return call

    @property
    def calls(self) -> int:
        return len(self.seconds)

    def _run(self, index, args, kwargs):
        payload = pickle.dumps((args, kwargs))  # what ZeroGPU does: an unpicklable argument fails here
        if index not in self._workers:  # forked at the function's first call, warm after
            ctx = multiprocessing.get_context("fork")
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=self._serve, args=(self.tasks[index], child), daemon=True)
            proc.start()
            self._workers[index] = (conn, proc)
        conn = self._workers[index][0]
        t0 = time.perf_counter()
        conn.send_bytes(payload)
        kind, value = pickle.loads(conn.recv_bytes())
        self.seconds.append(time.perf_counter() - t0)
        if kind == "error":
            raise value
        return value

    @staticmethod
    def _serve(task, conn):
        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except EOFError:
                return
            if message is None:  # the app closes its workers
                return
            args, kwargs = message
            try:
                result = task(*args, **kwargs)
                out = ("ok", list(result) if inspect.isgeneratorfunction(task) else result)
            except Exception as exc:  # sent back and raised in the caller, as ZeroGPU does
                out = ("error", exc if isinstance(exc, gr.Error) else
                       gr.Error(f"ZeroGPU worker error: {type(exc).__name__}", print_exception=False))
            try:
                data = pickle.dumps(out)
            except Exception as exc:
                data = pickle.dumps(("error", TypeError(f"the result does not pickle: {exc}")))
            conn.send_bytes(data)

    def close(self):
        for conn, proc in self._workers.values():
            conn.send_bytes(pickle.dumps(None))
            conn.close()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._workers.clear()
