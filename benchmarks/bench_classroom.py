"""A class on one server: many concurrent streams, and memory under many fresh API clients.

    python benchmarks/bench_classroom.py                       # bundled model, 1/4/16/32 streams, memory
    python benchmarks/bench_classroom.py --gpt2-small-random   # GPT-2-small-size model (random weights)
    python benchmarks/bench_classroom.py --streams 1 16 --skip-memory
    python benchmarks/bench_classroom.py --streams 1 16 --skip-memory --server-cpus 0   # a 1-core server

Streams: N visitors, each a light client (benchmarks/light_client.py: plain HTTP and SSE) in a
process of its own, submit /generate together (64 new tokens, sampled, one seed each) and read the
updates as they arrive. Time to first token (TTFT) is submit -> first streamed update, as the client
sees it; a stream's tokens/s is
(tokens - 1) / (last update - first update); aggregate tokens/s is all tokens / (last update - first
submit). Each N runs --repeats times after a warm-up; the figures are pooled over the repeats.

Memory: the server's RSS after 20 and after --calls /attention calls of a 512-token text, each a
request without a session (a new session each time), then the same for /generate; and the size of
what the server left under the temporary folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_generate import app_command, free_port, start_app, wait_for

PROMPT = "It was a dark and stormy night, and the"
LONG_TEXT = ("It was a dark and stormy night, and the old captain sat by the fire, telling the boy of the sea. " * 40)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def one_visitor(url: str, i: int, tokens: int, repeats: int, start, results) -> None:
    """One visitor in a process of its own: its client connects, then every round waits for the
    others and submits /generate; (round, submitted, first update, last update, tokens) go to
    ``results`` (perf_counter is the same clock in every process)."""
    from light_client import LightClient

    client = LightClient(url)
    for rep in range(repeats + 1):
        start.wait()
        t0 = time.perf_counter()
        stamps, last = [], None
        for stamp, update in client.stream("generate", prompt=PROMPT, max_new_tokens=tokens, seed=1000 * rep + i):
            stamps.append(stamp)
            last = update
        assert last is not None
        count = int(re.search(r"(\d+) tokens generated", last[1]).group(1))
        results.put((rep, t0, stamps[0], stamps[-1], count))
    client.close()


def run_streams(url: str, n: int, tokens: int, repeats: int) -> dict:
    """n visitors, each a light client in its own process (as in a class, where each browser runs
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
    from light_client import LightClient

    out = {}
    client = LightClient(url)
    for endpoint in ("attention", "generate"):
        rss = []
        for i in range(calls):  # each call names no session: a new session each time
            if endpoint == "attention":
                client.call("attention", text=LONG_TEXT)
            else:
                client.call("generate", prompt=PROMPT, max_new_tokens=16, seed=i)
            if i + 1 in (20, calls):
                rss.append(rss_mb(pid))
        out[endpoint] = {"rss_after_20_mb": rss[0], f"rss_after_{calls}_mb": rss[1],
                         "growth": rss[1] / rss[0] - 1}
    client.close()
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
    p.add_argument("--server-log", default=None, metavar="FILE",
                   help="write the app's log here (e.g. the thread counts its decode loop chose)")
    p.add_argument("--gpt2-small-random", action="store_true",
                   help="a randomly initialised GPT-2-small-size model (12 x 768, vocab 8192) built here, no download")
    p.add_argument("--server-cpus", default=None, metavar="LIST",
                   help="run the server on these CPUs only (taskset's list, e.g. 0 or 0-3): a smaller machine's "
                        "cores, while the visitors' clients run anywhere")
    args = p.parse_args(argv)

    port = free_port()
    cmd, _ = app_command(args, port)
    if args.server_cpus:
        cmd = ["taskset", "-c", args.server_cpus, *cmd]
    gradio_tmp = Path(tempfile.gettempdir()) / "gradio"
    tmp_before = folder_mb(gradio_tmp) if gradio_tmp.exists() else 0.0
    server = start_app(cmd, log_path=args.server_log)
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
