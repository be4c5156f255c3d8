"""The server's memory over a day of use, measured with a light client (plain HTTP and SSE).

    python benchmarks/bench_memory.py                    # 200 distinct texts, then a mixed day of 1,000 requests
    python benchmarks/bench_memory.py --texts 20 --day 100            # a short run
    python benchmarks/bench_memory.py --root /path/to/other/checkout  # the same against another version

The app runs in its own process (``app.py`` on the bundled model, as a Space runs it); the client
sends each request through ``/gradio_api/call/<name>`` and reads the answer's event stream with
httpx, so its own CPU cost is small next to the server's. The server's resident memory (RSS, from
/proc through psutil) is read before the first request and after each step:

1. **Distinct texts**: /attention on N distinct texts of about 400 tokens, one after another, each a
   fresh request without a session. The analysis cache (GPT_EXPLORER_ANALYSIS_CACHE_MB) fills, then
   evicts: after that the server should stay flat. RSS after 0, 20, 100 and 200 texts.
2. **A mixed day**: requests across every tab's endpoint (generation, attention, next token, logit
   lens, the 8-bit comparison, samples side by side) from 4 clients at once, distinct texts each time.
   RSS every quarter.

Prints a Markdown table and writes it, with the raw numbers, to benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import free_port, wait_for
from light_client import LightClient

ROOT = Path(__file__).resolve().parent.parent
VOCABULARY = ("the sea ship captain night storm wind old man house door light dark water land king queen sword "
              "horse road town river forest mountain letter mother father child friend heart word time day year "
              "hand eye face voice fire bread gold silver stone tree bird field morning evening long short great "
              "small good bad young cold warm quiet loud slow quick said went came saw took gave found thought "
              "knew told asked looked turned began seemed left felt kept brought stood heard ran fell held")
WORDS = VOCABULARY.split()


def text(seed: int, words: int = 330) -> str:
    """A distinct text of about 400 tokens of the bundled model (seeded)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


class Server:
    """``app.py`` in its own process on a free port; ``rss_mb()`` reads its resident memory."""

    def __init__(self, root: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=root,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.url, self.proc, timeout=300)

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def mixed_request(client: LightClient, i: int) -> None:
    """Request ``i`` of the mixed day: the endpoints in a fixed rotation, each with a distinct text."""
    kind = i % 20
    prompt = text(10_000 + i, words=40)
    if kind < 6:
        client.call("generate", prompt=prompt, max_new_tokens=48, seed=i)
    elif kind < 11:
        client.call("attention", text=text(20_000 + i))
    elif kind < 15:
        client.call("next_token", text=prompt)
    elif kind < 18:
        client.call("logit_lens", text=text(30_000 + i, words=120))
    elif kind == 18:
        client.call("compare_precision", text=text(40_000 + i, words=120))
    else:
        client.call("samples", prompt=prompt, max_new_tokens=24, n=4)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=200, help="distinct /attention texts (step 1)")
    p.add_argument("--day", type=int, default=1000, help="requests of the mixed day (step 2)")
    p.add_argument("--clients", type=int, default=4, help="clients at once in the mixed day")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app.py runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = p.parse_args(argv)
    server = Server(args.root)
    rows: list[tuple[str, float]] = []
    try:
        client = LightClient(server.url)
        try:
            client.call("attention", text="Warm up.")
            rows.append(("after start-up and one request", server.rss_mb()))
            marks = sorted({m for m in (20, 100, 200, args.texts) if m <= args.texts})
            for i in range(1, args.texts + 1):
                client.call("attention", text=text(i))
                if i in marks:
                    rows.append((f"after {i} distinct attention texts", server.rss_mb()))
        finally:
            client.close()
        done = [0]
        lock = threading.Lock()
        quarters = {round(args.day * q / 4) for q in (1, 2, 3, 4)}

        local, clients = threading.local(), []

        def one(i: int) -> None:
            if not hasattr(local, "client"):  # one client per worker thread: a visitor at a time each
                local.client = LightClient(server.url)
                clients.append(local.client)
            mixed_request(local.client, i)
            with lock:
                done[0] += 1
                if done[0] in quarters:
                    rows.append((f"mixed day: after {done[0]} requests", server.rss_mb()))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.day)))
        day_s = time.perf_counter() - t0
        for c in clients:
            c.close()
    finally:
        server.close()
    base = rows[0][1]
    print("| step | server RSS (MB) | growth since start-up (MB) |\n|---|---|---|")
    for label, mb in rows:
        print(f"| {label} | {mb:,.0f} | {mb - base:+,.0f} |")
    by = dict(rows)
    after_100, after_200 = by.get("after 100 distinct attention texts"), by.get("after 200 distinct attention texts")
    if after_100 and after_200:
        print(f"\nafter 200 texts vs after 100: {100 * (after_200 / after_100 - 1):+.1f} %")
    print(f"mixed day: {args.day} requests from {args.clients} clients in {day_s:.0f} s")
    result = {"rows": rows, "day_requests": args.day, "day_seconds": day_s, "root": str(args.root)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
