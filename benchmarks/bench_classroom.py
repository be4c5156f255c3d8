"""A class on one server: many concurrent streams, and memory under many fresh API clients.

    python benchmarks/bench_classroom.py                       # bundled model, 1/4/16/32 streams, memory
    python benchmarks/bench_classroom.py --gpt2-small-random   # GPT-2-small-size model (random weights)
    python benchmarks/bench_classroom.py --streams 1 16 --skip-memory

Streams: N gradio_client clients, each in a process of its own, submit /generate together (64 new
tokens, sampled, one seed each); each looks for updates every 2 ms. Time to first token (TTFT) is
submit -> first streamed update, as the client sees it (gradio_client itself checks for messages
every 50 ms); a stream's tokens/s is
(tokens - 1) / (last update - first update); aggregate tokens/s is all tokens / (last update - first
submit). Each N runs --repeats times after a warm-up; the figures are pooled over the repeats.

Memory: the server's RSS after 20 and after --calls /attention calls of a 512-token text, each from
a fresh client (a new session), then the same for /generate; and the size of what the server left
under the temporary folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_generate import app_command, free_port, wait_for

PROMPT = "It was a dark and stormy night, and the"
LONG_TEXT = ("It was a dark and stormy night, and the old captain sat by the fire, telling the boy of the sea. " * 40)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


POLL_S = 0.002  # how often a client looks for a new update of its job


def follow(job) -> list[float]:
    """When each update of a gradio_client job arrived; the last update is kept on ``job``. (The job's
    own iterator checks every millisecond, which with 32 clients would cost the machine the server
    runs on more than the server itself.)"""
    stamps = []
    while True:
        outputs = job.outputs()
        while len(stamps) < len(outputs):
            stamps.append(time.perf_counter())
        if job.done() and len(stamps) >= len(job.outputs()):
            return stamps
        time.sleep(POLL_S)


def one_visitor(url: str, i: int, tokens: int, repeats: int, start, results) -> None:
    """One visitor in a process of its own: its client connects, then every round waits for the
    others and submits /generate; (round, submitted, first update, last update, tokens) go to
    ``results`` (perf_counter is the same clock in every process)."""
    import ssl

    from gradio_client import Client

    # gradio_client makes a new HTTP client for each request, and each loads the CA certificates
    # (~30 ms of CPU) unless given a TLS context: one per process, so the clients leave the CPU to
    # the server (a browser pays nothing of the kind).
    client = Client(url, verbose=False, ssl_verify=ssl.create_default_context())
    for rep in range(repeats + 1):
        start.wait()
        t0 = time.perf_counter()
        job = client.submit(prompt=PROMPT, max_new_tokens=tokens, seed=1000 * rep + i, api_name="/generate")
        stamps = follow(job)
        count = int(re.search(r"(\d+) tokens generated", job.outputs()[-1][1]).group(1))
        results.put((rep, t0, stamps[0], stamps[-1], count))


def run_streams(url: str, n: int, tokens: int, repeats: int) -> dict:
    """n visitors, each a gradio_client in its own process (as in a class, where each browser runs
    on its own machine, no visitor waits for another's client), submitting together; the first round
    is a warm-up."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=one_visitor, args=(url, i, tokens, repeats, start, results), daemon=True)
             for i in range(n)]
    for proc in procs:
        proc.start()
    rounds: dict[int, list] = {}
    for _ in range(n * (repeats + 1)):
        rep, *row = results.get(timeout=600)
        rounds.setdefault(rep, []).append(row)
    for proc in procs:
        proc.join()
    ttfts, rates, aggregates, counts = [], [], [], []
    for rep in range(1, repeats + 1):  # round 0: warm-up
        rows = rounds[rep]
        first_submit = min(r[0] for r in rows)
        last_update = max(r[2] for r in rows)
        aggregates.append(sum(r[3] for r in rows) / (last_update - first_submit))
        for t0, first, last, count in rows:
            ttfts.append((first - t0) * 1000)
            if count > 1 and last > first:
                rates.append((count - 1) / (last - first))
            counts.append(count)
    return {"streams": n, "ttft_p50_ms": statistics.median(ttfts), "ttft_p95_ms": percentile(ttfts, 0.95),
            "stream_tokens_per_s": statistics.median(rates), "aggregate_tokens_per_s": statistics.median(aggregates),
            "tokens_per_stream": statistics.median(counts)}


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def folder_mb(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total / 2**20


def run_memory(url: str, pid: int, calls: int) -> dict:
    from gradio_client import Client

    out = {}
    for endpoint in ("attention", "generate"):
        rss = []
        for i in range(calls):
            client = Client(url, verbose=False)  # a fresh client: a new session each time
            if endpoint == "attention":
                client.predict(LONG_TEXT, 0, 0, "head", "mean-heads", -1, "layer", api_name="/attention")
            else:
                client.predict(prompt=PROMPT, max_new_tokens=16, seed=i, api_name="/generate")
            if i + 1 in (20, calls):
                rss.append(rss_mb(pid))
        out[endpoint] = {"rss_after_20_mb": rss[0], f"rss_after_{calls}_mb": rss[1],
                         "growth": rss[1] / rss[0] - 1}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="catalogue name (default: the bundled model)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--calls", type=int, default=300, help="fresh-client calls per endpoint in the memory run")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-streams", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--gpt2-small-random", action="store_true",
                   help="a randomly initialised GPT-2-small-size model (12 x 768, vocab 8192) built here, no download")
    args = p.parse_args(argv)

    port = free_port()
    cmd, _ = app_command(args, port)
    gradio_tmp = Path(tempfile.gettempdir()) / "gradio"
    tmp_before = folder_mb(gradio_tmp) if gradio_tmp.exists() else 0.0
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    figures: dict = {"model": args.model or "gutenberg-gpt", "precision": args.precision, "tokens": args.tokens}
    try:
        wait_for(url, server)
        print(f"model {figures['model']} ({args.precision}) · {args.tokens} new tokens per stream · "
              f"{args.repeats} runs per row after a warm-up")
        if not args.skip_streams:
            print(f"{'streams':>8}{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}{'tok/s/stream':>14}{'aggregate tok/s':>17}")
        rows = []
        for n in ([] if args.skip_streams else args.streams):
            r = run_streams(url, n, args.tokens, args.repeats)
            rows.append(r)
            print(f"{n:8d}{r['ttft_p50_ms']:13.0f}{r['ttft_p95_ms']:13.0f}{r['stream_tokens_per_s']:14.1f}"
                  f"{r['aggregate_tokens_per_s']:17.1f}", flush=True)
        if rows:
            figures["streams"] = rows
        one = next((r for r in rows if r["streams"] == 1), None)
        sixteen = next((r for r in rows if r["streams"] == 16), None)
        if one and sixteen:
            ratio = sixteen["aggregate_tokens_per_s"] / one["aggregate_tokens_per_s"]
            figures["aggregate_16_vs_1"] = ratio
            print(f"16 streams: aggregate {ratio:.1f}x one stream (goal >= 3x), "
                  f"TTFT p95 {sixteen['ttft_p95_ms']:.0f} ms (goal <= 1000 ms)")
        if not args.skip_memory:
            mem = run_memory(url, server.pid, args.calls)
            figures["memory"] = mem
            for endpoint, m in mem.items():
                after = m[f"rss_after_{args.calls}_mb"]
                print(f"/{endpoint}: RSS {m['rss_after_20_mb']:.0f} MB after 20 fresh clients, "
                      f"{after:.0f} MB after {args.calls} ({m['growth']:+.1%}; goal within 15%)")
            tmp_after = folder_mb(gradio_tmp) if gradio_tmp.exists() else 0.0
            figures["gradio_tmp_growth_mb"] = tmp_after - tmp_before
            print(f"Gradio's cache under {gradio_tmp}: {tmp_after - tmp_before:+.1f} MB during the run")
    finally:
        server.terminate()
        server.wait(timeout=30)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
