"""The app on ZeroGPU under the real ``spaces`` package (the release pinned in requirements-dev.txt),
run as a Space runs it: ``app.py`` with SPACES_ZERO_GPU=true, in a process of its own
(tests/zerogpu_space.py stands in only for what a CPU-only torch lacks), against a device API served
here that books GPUs as ZeroGPU's does and records each booking. The API is reached over HTTP, as
visitors reach it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from conftest import free_port, make_tiny_checkpoint
from waiting import wait_until

pytest.importorskip("spaces", reason="the spaces package (requirements-dev.txt)")
ROOT = Path(__file__).resolve().parent.parent
TEXT = "It was a dark and stormy night, and the old captain said"
# ZeroGPU refuses a call that books more than the visitor has left: 120 s a day for an anonymous visitor,
# and newer nodes count a booking up to 1.5 times. 60 s is the most a call may book.
MAX_BOOKING_S = 60
ANALYSIS_S = 20  # an analysis on a worker that has its model (demo.runtime.zerogpu.ANALYSIS_S)


class DeviceAPI:
    """ZeroGPU's device API as the package calls it: /schedule books a GPU for ``durationSeconds`` (the
    lowest free one: a call while another runs gets another GPU, so the package starts a new worker;
    a free GPU is reported idle, so its warm worker is reused), /release frees it, /allow and
    /startup-report say yes."""

    def __init__(self) -> None:
        self.bookings: list[int] = []
        self.busy: set[int] = set()
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = b""
                if url.path == "/schedule":
                    with api.lock:
                        gpu = min(set(range(64)) - api.busy)
                        api.busy.add(gpu)
                        api.bookings.append(int(query["durationSeconds"]))
                    body = json.dumps({"idle": True, "nvidiaIndex": gpu, "nvidiaUUID": f"GPU-{gpu}",
                                       "allowToken": f"{gpu}:{uuid.uuid4().hex}"}).encode()
                elif url.path == "/release":
                    with api.lock:
                        api.busy.discard(int(query["allowToken"].split(":")[0]))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """(url, device API, log path) of the app started as a ZeroGPU Space, with a local tiny model."""
    import httpx

    home = tmp_path_factory.mktemp("zerogpu")
    tiny = make_tiny_checkpoint(home / "tiny", n_layer=2, seed=3)
    (home / "cgroup").write_text("1:devices:/space\n")
    api = DeviceAPI()
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url,
           "ZEROGPU_PROC_SELF_CGROUP_PATH": str(home / "cgroup"), "ZEROGPU_OFFLOAD_DIR": str(home / "tensors"),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    log = home / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "zerogpu_space.py"), "--port", str(port),
                                 "--add-model", f"tiny={tiny}"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # its GPU workers join its group
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            return httpx.get(url + "gradio_api/info", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(up, timeout_s=300), log.read_text()[-4000:]
        yield url, api, log
    finally:
        # the app and the GPU workers the package forked (which outlive it unless stopped too)
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"\nZeroGPU bookings (s), in order: {api.bookings}")
        print("\n".join(line for line in log.read_text().splitlines() if "ZeroGPU" in line or "serving" in line))


@pytest.fixture(scope="module")
def visitor(space):
    from gradio_client import Client

    return Client(space[0], verbose=False)


def attention(client) -> dict:
    return client.predict(TEXT, 0, 0, "head", "mean-heads", -1, "layer", api_name="/attention")[1]


@pytest.mark.timeout(600)
def test_the_start_up_model_answers_in_a_gpu_worker(space, visitor):
    url, api, log = space
    assert "ZeroGPU tensors packing" in log.read_text()  # the package packed the start-up model at launch
    data = attention(visitor)
    assert data["model"] == "gutenberg-gpt" and len(data["weights"]) == len(data["tokens"])
    text, stats = visitor.predict(TEXT, 12, api_name="/generate")
    assert text.strip() and "tokens" in stats and api.bookings


@pytest.mark.timeout(600)
def test_a_visitor_loads_another_model_and_every_view_runs_it(space, visitor):
    """Load model runs in the thread where the package emulates CUDA: from a Gradio worker thread it
    would reach the real CUDA start-up, which the package replaces with an error."""
    status = visitor.predict("tiny", "fp32", api_name="/load_model")
    assert "**tiny**" in status and "⚠️" not in status, status
    assert attention(visitor)["model"] == "tiny"  # a warm worker forked before the load: it loads tiny
    text, _ = visitor.predict(TEXT, 8, api_name="/generate")
    assert text.strip()
    data = visitor.predict(TEXT, api_name="/compare_precision")  # loads the second precision, compares
    assert data["model"] == "tiny" and data["other_precision"] == "int8", data.get("summary")


@pytest.mark.timeout(600)
def test_no_call_books_more_than_60_seconds(space, visitor):
    """ZeroGPU refuses a call that books more than the visitor's quota has left (an anonymous visitor
    has 120 s a day, and newer nodes count a booking up to 1.5 times)."""
    _, api, log = space
    visitor.predict(TEXT + " again", 0, 0, "head", "mean-heads", -1, "layer", api_name="/attention")
    assert len(api.bookings) >= 4, api.bookings
    assert max(api.bookings) <= MAX_BOOKING_S, api.bookings
    assert min(api.bookings) <= ANALYSIS_S  # an analysis on a worker that has its model books no load
    assert log.read_text().count(" books ") == len(api.bookings)  # the app logs each booking
