"""Load and cancellation figures for the /generate endpoint, measured through gradio_client.

    python benchmarks/bench_load.py                          # 16 concurrent streams of 64 new tokens
    python benchmarks/bench_load.py --streams 32 --tokens 32 --concurrency 4
    python benchmarks/bench_load.py --streams 0 --cancel-cycles 50   # only the cancellation cycles

Load: N streaming /generate calls are submitted at once through one gradio_client Client. For each
stream: time to first token (TTFT, submit -> first streamed update, so it includes the wait in the
queue), the server's own TTFT (from the stats line: model start -> first token), and decode speed
((tokens - 1) / (last update - first update)). The table gives p50 / p95 / max over the streams,
plus the aggregate throughput (all tokens / wall time).

Cancellation: cycles of start-then-cancel, each waiting for the first streamed token and then
cancelling in one of three ways: ``job.cancel()`` (gradio_client), a raw SSE stream closed mid-way
(httpx), or a client process killed mid-stream. After each cycle it measures how long the server
takes to end the generation thread; after all of them, the live generation threads and the server's
RSS against a warmed-up baseline.

The app runs in its own process, as in production: ``bench_load.py --serve`` is app.py plus a
probe on stdin/stdout that reports the live generation threads and the RSS (after a gc) on demand.
tests/test_load.py uses the same code for its correctness checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "It was a dark and stormy night, and the"


def generate_args(prompt: str = PROMPT, max_new_tokens: int = 64, seed: int = 1, **overrides) -> dict:
    """Arguments of one /generate call (Balanced preset, fixed seed)."""
    from demo.core.sampling import PRESETS

    args = dict(prompt=prompt, max_new_tokens=max_new_tokens, **PRESETS["Balanced"].as_dict())
    args.update(seed=seed, **overrides)
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(q / 100 * len(v)) - 1))]


# ----------------------------------------------------------------------------- the app in its own process


def serve(port: int, model: str | None, precision: str, device: str | None) -> int:
    """``--serve``: run the app; answer each 'threads' or 'status' line on stdin with one JSON line on
    stdout ('status' runs a full garbage collection first, for a steady RSS)."""
    import gc
    import logging

    import psutil

    probe = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # everything else the app prints goes to stderr
    logging.basicConfig(level=logging.WARNING)
    from demo.app_factory import create_app
    from demo.runtime.generation import live_generation_threads

    demo, launch_kwargs = create_app(model=model, precision=precision, device=device)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    probe.write(f"READY http://127.0.0.1:{port}/\n")
    me = psutil.Process()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd in ("status", "threads"):
            if cmd == "status":
                gc.collect()
            probe.write(json.dumps({"generation_threads": len(live_generation_threads()),
                                    "threads": threading.active_count(), "rss": me.memory_info().rss}) + "\n")
        elif cmd == "quit":
            break
    demo.close()
    return 0


class AppServer:
    """The app in a subprocess on a free port, with the status probe. Use as a context manager."""

    def __init__(self, env: dict | None = None, model: str | None = None, precision: str = "auto",
                 device: str | None = None, log_path: str | Path | None = None):
        self.env, self.model, self.precision, self.device, self.log_path = env or {}, model, precision, device, log_path
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._lines: queue.Queue = queue.Queue()
        self._lock = threading.Lock()

    def __enter__(self) -> AppServer:
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout_s: float = 240) -> None:
        port = free_port()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(port),
               "--precision", self.precision]
        if self.model:
            cmd += ["--model", self.model]
        if self.device:
            cmd += ["--device", self.device]
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in self.env.items()}}
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True, name="bench-probe-reader").start()
        line = self._line(timeout_s)
        if not line.startswith("READY "):
            raise RuntimeError(f"the app did not start: {line!r}")
        self.url = line.split(" ", 1)[1]

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("EXIT")

    def _line(self, timeout_s: float) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError("the app's probe did not answer in time") from None
        if line == "EXIT":
            raise RuntimeError(f"the app exited with code {self.proc.wait()}")
        return line

    def status(self, gc: bool = True) -> dict:
        """{'generation_threads': live model threads, 'threads': all threads, 'rss': bytes}; with `gc`
        the server first runs a full garbage collection (slow: not for polling)."""
        with self._lock:
            self.proc.stdin.write("status\n" if gc else "threads\n")
            self.proc.stdin.flush()
            return json.loads(self._line(30))

    def wait_idle(self, timeout_s: float = 10, interval_s: float = 0.02) -> float | None:
        """Seconds until no generation thread is alive (None if some still are after timeout_s)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.status(gc=False)["generation_threads"] == 0:
                return time.perf_counter() - t0
            time.sleep(interval_s)
        return None

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- concurrent streams


@dataclass
class StreamResult:
    submitted: float
    first: float | None = None
    last: float | None = None
    updates: int = 0
    text: str = ""
    stats: str = ""
    error: str | None = None

    @property
    def n_tokens(self) -> int:
        m = re.search(r"(\d+) tokens generated", self.stats)
        return int(m.group(1)) if m else 0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.submitted

    @property
    def server_ttft_s(self) -> float | None:
        m = re.search(r"first token after ([\d,]+) ms", self.stats)
        return float(m.group(1).replace(",", "")) / 1000 if m else None

    @property
    def tokens_per_s(self) -> float | None:
        if self.n_tokens < 2 or self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.n_tokens - 1) / (self.last - self.first)


@dataclass
class LoadReport:
    streams: list[StreamResult]
    wall_s: float
    max_new_tokens: int
    extra: dict = field(default_factory=dict)

    def table(self) -> str:
        ok = [s for s in self.streams if s.error is None]
        rows = [("TTFT, client (s)", [s.ttft_s for s in ok]),
                ("TTFT, server (s)", [s.server_ttft_s for s in ok]),
                ("tokens/s per stream", [s.tokens_per_s for s in ok])]
        out = [f"{len(self.streams)} concurrent streams · {self.max_new_tokens} new tokens each · "
               f"{len(ok)} ok, {len(self.streams) - len(ok)} failed · wall {self.wall_s:.1f} s",
               f"{'':22}{'p50':>9}{'p95':>9}{'min':>9}{'max':>9}"]
        for name, values in rows:
            v = [x for x in values if x is not None]
            if v:
                out.append(f"{name:22}{percentile(v, 50):9.3f}{percentile(v, 95):9.3f}{min(v):9.3f}{max(v):9.3f}")
        total = sum(s.n_tokens for s in ok)
        out.append(f"aggregate: {total} tokens in {self.wall_s:.1f} s = {total / self.wall_s:.1f} tokens/s")
        return "\n".join(out)

    def as_dict(self) -> dict:
        ok = [s for s in self.streams if s.error is None]

        def stats(values):
            v = [x for x in values if x is not None]
            return {"p50": percentile(v, 50), "p95": percentile(v, 95), "min": min(v), "max": max(v)} if v else None

        return {"streams": len(self.streams), "ok": len(ok), "max_new_tokens": self.max_new_tokens,
                "wall_s": self.wall_s, "ttft_client_s": stats([s.ttft_s for s in ok]),
                "ttft_server_s": stats([s.server_ttft_s for s in ok]),
                "tokens_per_s_per_stream": stats([s.tokens_per_s for s in ok]),
                "aggregate_tokens_per_s": sum(s.n_tokens for s in ok) / self.wall_s, **self.extra}


def run_streams(url: str, n: int = 16, max_new_tokens: int = 64, prompt: str = PROMPT, seed: int = 100,
                timeout_s: float = 600, poll_s: float = 0.005) -> LoadReport:
    """Submit `n` streaming /generate calls at once; one thread watches them all (no busy iterator
    per job), stamping each new update as it arrives."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    t_start = time.perf_counter()
    jobs, results = [], []
    for i in range(n):
        results.append(StreamResult(submitted=time.perf_counter()))
        jobs.append(client.submit(**generate_args(prompt, max_new_tokens, seed + i), api_name="/generate"))
    while True:
        all_done = all(job.done() for job in jobs)  # read before the outputs: no update is missed
        now = time.perf_counter()
        for job, r in zip(jobs, results):
            outs = job.outputs()
            if len(outs) > r.updates:
                r.first = r.first or now
                r.last, r.updates = now, len(outs)
                r.text, r.stats = outs[-1][0], outs[-1][1]
        if all_done:
            break
        if now - t_start > timeout_s:
            for job in jobs:
                job.cancel()
            raise TimeoutError(f"{sum(not j.done() for j in jobs)} streams still running after {timeout_s} s")
        time.sleep(poll_s)
    wall = time.perf_counter() - t_start
    for job, r in zip(jobs, results):
        try:
            final = job.result(timeout=5)
            r.text, r.stats = final[0], final[1]
        except Exception as exc:
            r.error = f"{type(exc).__name__}: {exc}"
    client.close()
    return LoadReport(results, wall, max_new_tokens)


# ----------------------------------------------------------------------------- cancellation


_HTTP = []


def http():
    """One keep-alive httpx client (a new one per request costs more CPU than the request)."""
    import httpx

    if not _HTTP:
        _HTTP.append(httpx.Client(timeout=60))
    return _HTTP[0]


def _raw_start(url: str, args: dict) -> str:
    from demo.ui.tabs.generate import API_PARAMETERS

    r = http().post(f"{url}gradio_api/call/generate", json={"data": [args[k] for k in API_PARAMETERS]}, timeout=30)
    r.raise_for_status()
    return r.json()["event_id"]


def sse_cancel(url: str, args: dict, timeout_s: float = 60) -> None:
    """Start a generation with the raw HTTP API and close its SSE stream after the first update."""
    event_id = _raw_start(url, args)
    with http().stream("GET", f"{url}gradio_api/call/generate/{event_id}", timeout=timeout_s) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "generating":
                return  # leaving the with-block drops the connection mid-stream
            elif event in ("error", "complete"):
                raise RuntimeError(f"the stream ended before it could be dropped: {event} {line[:200]}")
    raise RuntimeError("the stream ended before its first update")


_KILLED_CLIENT = r"""
import sys, httpx
url, event_id = sys.argv[1], sys.argv[2]
with httpx.stream("GET", f"{url}gradio_api/call/generate/{event_id}", timeout=60) as r:
    event = None
    for line in r.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "generating":
            print("STREAMING", flush=True)
"""


def killed_client_cancel(url: str, args: dict, timeout_s: float = 60) -> None:
    """A client process reading the stream is killed (SIGKILL) after its first update."""
    event_id = _raw_start(url, args)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CLIENT, url, event_id], stdout=subprocess.PIPE, text=True)
    try:
        reader = queue.Queue()
        threading.Thread(target=lambda: reader.put(proc.stdout.readline()), daemon=True).start()
        line = reader.get(timeout=timeout_s)
        if "STREAMING" not in line:
            raise RuntimeError(f"the client process did not stream: {line!r}")
    finally:
        proc.kill()
        proc.wait()


def client_cancel(client, args: dict, timeout_s: float = 60) -> None:
    """gradio_client: submit, wait for the first streamed update, job.cancel()."""
    job = client.submit(**args, api_name="/generate")
    t0 = time.perf_counter()
    while not job.outputs():
        if job.done():
            raise RuntimeError(f"the job ended before its first update: {job.status()}")
        if time.perf_counter() - t0 > timeout_s:
            job.cancel()
            raise TimeoutError("no streamed update in time")
        time.sleep(0.005)
    job.cancel()


CANCEL_KINDS = ("client", "sse", "kill")


def cancel_schedule(cycles: int, kill_every: int = 10) -> list[str]:
    """Alternate job.cancel() and dropped SSE streams; every `kill_every`-th cycle kills a client process."""
    return ["kill" if (i + 1) % kill_every == 0 else ("client", "sse")[i % 2] for i in range(cycles)]


@dataclass
class CancelReport:
    cycles: list[tuple[str, float | None]]  # (kind, seconds from cancel until no generation thread)
    threads_after: int
    rss_before: int
    rss_after: int

    @property
    def rss_delta(self) -> int:
        return self.rss_after - self.rss_before

    def table(self) -> str:
        out = [f"{len(self.cycles)} start-then-cancel cycles: "
               + ", ".join(f"{sum(k == kind for k, _ in self.cycles)} {kind}" for kind in CANCEL_KINDS)]
        out.append(f"{'generation ended after cancel (s)':36}{'p50':>8}{'p95':>8}{'max':>8}")
        for kind in (*CANCEL_KINDS, "all"):
            v = [s for k, s in self.cycles if s is not None and (kind == "all" or k == kind)]
            if v:
                out.append(f"  {kind:34}{percentile(v, 50):8.3f}{percentile(v, 95):8.3f}{max(v):8.3f}")
        stuck = sum(s is None for _, s in self.cycles)
        out.append(f"cycles whose thread outlived 10 s: {stuck} · generation threads alive at the end: "
                   f"{self.threads_after}")
        out.append(f"server RSS: {self.rss_before / 2**20:.1f} MB warmed up -> {self.rss_after / 2**20:.1f} MB after "
                   f"({self.rss_delta / 2**20:+.1f} MB, {self.rss_delta / self.rss_before:+.1%})")
        return "\n".join(out)

    def as_dict(self) -> dict:
        return {"cycles": self.cycles, "threads_after": self.threads_after, "rss_before": self.rss_before,
                "rss_after": self.rss_after, "rss_delta": self.rss_delta}


def cancel_cycles(server: AppServer, cycles: int = 50, max_new_tokens: int = 400, warmup: int = 6,
                  kill_every: int = 10, idle_timeout_s: float = 10) -> CancelReport:
    """Warm up (a full generation and `warmup` cycles of each kind), take the RSS baseline, run
    `cycles` start-then-cancel cycles, and measure what is left (a cycle whose generation thread is
    still alive ``idle_timeout_s`` after the cancel counts as stuck)."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    args = generate_args(max_new_tokens=max_new_tokens)

    def one(kind: str, i: int) -> float | None:
        a = {**args, "seed": 1000 + i}
        if kind == "client":
            client_cancel(client, a)
        elif kind == "sse":
            sse_cancel(server.url, a)
        else:
            killed_client_cancel(server.url, a)
        return server.wait_idle(idle_timeout_s)

    client.predict(**generate_args(max_new_tokens=16), api_name="/generate")
    for i in range(warmup):
        one(CANCEL_KINDS[i % len(CANCEL_KINDS)], i)
    server.wait_idle(idle_timeout_s)
    rss_before = min(server.status()["rss"] for _ in range(3))
    results = [(kind, one(kind, i)) for i, kind in enumerate(cancel_schedule(cycles, kill_every))]
    server.wait_idle(idle_timeout_s)
    time.sleep(0.5)
    end = [server.status() for _ in range(3)]
    client.close()
    return CancelReport(results, end[-1]["generation_threads"], rss_before, min(s["rss"] for s in end))


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="catalogue name (default: the bundled model)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--streams", type=int, default=16, help="concurrent /generate calls (0: skip the load test)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per stream")
    p.add_argument("--concurrency", type=int, default=None, help="GPT_EXPLORER_CONCURRENCY for the app")
    p.add_argument("--cancel-cycles", type=int, default=0, help="start-then-cancel cycles (0: skip)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--log", default=None, help="write the app's own log here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.port, args.model, args.precision, args.device)

    env = {"GPT_EXPLORER_QUEUE_SIZE": max(64, 2 * args.streams)}
    if args.concurrency:
        env["GPT_EXPLORER_CONCURRENCY"] = args.concurrency
    figures = {}
    with AppServer(env=env, model=args.model, precision=args.precision, device=args.device,
                   log_path=args.log) as server:
        from gradio_client import Client

        Client(server.url, verbose=False).predict(**generate_args(max_new_tokens=8), api_name="/generate")  # warm-up
        if args.streams:
            report = run_streams(server.url, args.streams, args.tokens)
            print(report.table())
            figures["load"] = report.as_dict()
            failed = [s.error for s in report.streams if s.error]
            if failed:
                print("failures:", *failed[:5], sep="\n  ")
        if args.cancel_cycles:
            if args.streams:
                print()
            cancel = cancel_cycles(server, args.cancel_cycles)
            print(cancel.table())
            figures["cancel"] = cancel.as_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
