"""Load, a full queue and cancellation, through the API (correctness only: the timings are the job of
benchmarks/bench_load.py, whose measuring code these tests share).

* 16 concurrent streaming /generate calls all finish with valid text and their own seed's text.
* An app started with a tiny queue (GPT_EXPLORER_QUEUE_SIZE=2, GPT_EXPLORER_CONCURRENCY=1) turns
  the next request away with a clean "Queue is full" and keeps serving the others.
* 50 start-then-cancel cycles (gradio_client job.cancel(), SSE streams dropped mid-way, client
  processes killed mid-stream) leave no generation thread behind and the server's memory where it
  was once warmed up.

The figures each run measures are written to test-artifacts/load-figures.txt.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.utils import QueueError, Status

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_load as bl
from waiting import CEILING_S, ModelGate, wait_until

from demo.runtime.generation import live_generation_threads

ARTIFACTS = REPO / "test-artifacts"
MB = 2**20


def record(title: str, text: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "load-figures.txt", "a", encoding="utf-8") as f:
        f.write(f"## {title} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n{text}\n\n")
    print(text)


def test_16_concurrent_streams_all_finish_with_valid_text(live_app, client):
    report = bl.run_streams(live_app[1], n=16, max_new_tokens=12, seed=100, timeout_s=300)
    record("16 concurrent /generate streams, in-process app (test run: not a benchmark)", report.table())
    assert [s.error for s in report.streams if s.error] == []
    for i, s in enumerate(report.streams):
        assert s.updates >= 1 and isinstance(s.text, str) and s.text.strip(), f"stream {i}: {s}"
        assert s.n_tokens == 12 or "model ended the text" in s.stats, f"stream {i}: {s.stats}"
        assert f"seed {100 + i}" in s.stats
    # a seed alone decides its text, even while 15 other requests sample at the same time
    alone = client.predict(**bl.generate_args(max_new_tokens=12, seed=103), api_name="/generate")
    assert alone[0] == report.streams[3].text
    assert wait_until(lambda: not live_generation_threads())


@pytest.fixture(scope="module")
def small_app(tmp_path_factory):
    """The app in its own process, as in production, with a queue of 2 and one generation at a time."""
    log = tmp_path_factory.mktemp("small-app") / "app.log"
    env = {"GPT_EXPLORER_QUEUE_SIZE": 2, "GPT_EXPLORER_CONCURRENCY": 1, "GPT_EXPLORER_MAX_STREAMS": 1}
    server = bl.AppServer(env=env,
                          model="gutenberg-gpt", precision="fp32", device="cpu", log_path=log)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tiny_queue_app():
    """The app in this process with a queue of 2 and one generation at a time (its model can be held
    by a ModelGate, so "a request is running" is a state the test controls)."""
    from conftest import free_port

    from demo.app_factory import create_app
    from demo.core.settings import Settings

    settings = Settings(model="gutenberg-gpt", precision="fp32", queue_size=2, concurrency=1, max_streams=1)
    demo, launch_kwargs = create_app(settings, device="cpu")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def test_a_full_queue_answers_cleanly_and_keeps_serving(tiny_queue_app):
    demo, url = tiny_queue_app
    # One client per request, as from different people. (Jobs that share one gradio_client Client share
    # its session, and Gradio's /cancel stops every job of a session for that endpoint: see the report.)
    clients = [Client(url, verbose=False) for _ in range(4)]
    long = bl.generate_args(max_new_tokens=400)
    loaded = demo.manager.require()
    with ModelGate(loaded.model, hold_at=10) as gate:  # the first request stays mid-generation
        running = clients[0].submit(**long, api_name="/generate")
        assert gate.wait_held(), "the first request never started"
        queued = []
        for c, seed in zip(clients[1:3], (2, 3)):
            job = c.submit(**{**long, "seed": seed}, api_name="/generate")
            assert wait_until(lambda j=job: j.status().code == Status.IN_QUEUE), job.status()
            queued.append(job)
        rejected = clients[3].submit(**{**long, "seed": 4}, api_name="/generate")
        with pytest.raises(QueueError, match="Queue is full"):
            rejected.result(timeout=CEILING_S)
        # the requests already accepted are untouched: one generating, two waiting
        assert not running.done() and all(job.status().code == Status.IN_QUEUE for job in queued)
        for job in queued:
            job.cancel()
    running.cancel()  # after the gate opens: Gradio cancels a generator between two of its updates
    assert wait_until(lambda: not live_generation_threads()), "a generation thread outlived its cancelled request"
    ok = clients[3].predict(**bl.generate_args(max_new_tokens=5), api_name="/generate")
    assert ok[0].strip() and "5 tokens generated" in ok[1]
    for c in clients:
        c.close()


def test_50_start_then_cancel_cycles_leave_no_thread_and_no_leak(small_app):
    report = bl.cancel_cycles(small_app, cycles=50, max_new_tokens=400, warmup=6, idle_timeout_s=CEILING_S)
    record("50 start-then-cancel cycles, app in its own process (queue 2, concurrency 1)", report.table())
    kinds = {kind for kind, _ in report.cycles}
    assert kinds == set(bl.CANCEL_KINDS)
    stuck = [(i, kind) for i, (kind, s) in enumerate(report.cycles) if s is None]
    assert not stuck, f"generation threads outlived their cancelled request: {stuck}"
    assert report.threads_after == 0
    allowed = max(0.05 * report.rss_before, 30 * MB)
    assert report.rss_delta <= allowed, (f"RSS grew by {report.rss_delta / MB:.1f} MB over 50 cycles "
                                         f"(allowed {allowed / MB:.1f} MB)")
