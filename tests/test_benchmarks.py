"""The benchmark scripts still run against the code they measure (with the smallest arguments: this
checks that they work and what they count, not how fast anything is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_the_attention_benchmark_runs_and_its_switches_run_no_forward_pass():
    out = run_script("bench_attention.py", "--models", "bundled", "--lengths", "32", "--repeats", "1",
                     "--switches", "2", "--threads", "1")
    assert "| bundled " in out
    assert "Switches ran no forward pass: True" in out


def test_the_next_token_benchmark_runs_and_a_slider_change_runs_no_forward_pass():
    out = run_script("bench_next_token.py", "--repeats", "2", "--appends", "2", "--no-client")
    assert out.count("model_forwards_during_slider_refreshes 0") == 2  # the short text and the full window
    assert out.count("model_forwards_per_most_likely_append 1.0") == 2


def test_the_memory_benchmark_answers_every_endpoint_through_the_light_client(tmp_path):
    """Every request of its mixed day (each endpoint in turn) must answer without an error event."""
    out = run_script("bench_memory.py", "--texts", "2", "--day", "20", "--clients", "2",
                     "--out", str(tmp_path / "memory.json"))
    assert "| after 2 distinct attention texts |" in out and "mixed day: 20 requests from 2 clients" in out
    assert (tmp_path / "memory.json").is_file()


def test_the_streaming_benchmark_compares_raw_and_served_through_the_light_client():
    out = run_script("bench_generate.py", "--tokens", "8", "--repeats", "1", "--threads", "1",
                     "--raw-threads", "1", "2")
    rows = [line.split()[:4] for line in out.splitlines()]
    assert ["raw", "model.generate,", "1", "thr"] in rows and ["raw", "model.generate,", "2", "thr"] in rows
    assert "served /generate" in out and "torch threads: 1 (raw: 1, 2; server: 1)" in out
    assert "against raw at" in out  # the served stream is held against the fastest thread count


def test_the_classroom_benchmark_streams_to_visitors_in_processes_of_their_own():
    out = run_script("bench_classroom.py", "--streams", "2", "--tokens", "6", "--repeats", "1", "--skip-memory")
    assert any(line.split()[:1] == ["2"] for line in out.splitlines())  # the row of 2 streams
