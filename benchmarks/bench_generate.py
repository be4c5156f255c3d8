"""Streaming overhead: raw ``model.generate`` versus what a ``/generate`` call through the server sees.

    python benchmarks/bench_generate.py                      # bundled model, CPU, fp32
    python benchmarks/bench_generate.py --model gpt2 --precision int8 --tokens 200
    python benchmarks/bench_generate.py --gpt2-small-random --tokens 100   # GPT-2-small-size, no download

Both sides run greedy decoding of the same prompt for the same number of new tokens, so they do the
same work. Raw: time to first token (TTFT) is a 1-token ``generate``; decode speed is
(N-1) / (T(N) - T(1)). Client: TTFT is submit → first streamed update; decode speed is
(N-1) / (last update - first update). The two sides take turns, one run each per round for --repeats
rounds, so a slow spell of a shared machine falls on both; each figure is the median of its side's
runs, and each side's best run is printed too. The served/raw ratio comes with a 95 % interval from
resampling the rounds (bootstrap, rounds kept whole): the uncertainty of this run's ratio (another
run's ratio may fall outside it; the interval leaves out that the faster raw thread count was picked
by its median). On a 2-core VM a 200-token run of either side moved 13-15 % (one standard deviation)
from round to round in a noisy spell, and that interval was 11-14 points wide with 40 rounds (about
21 with 9); in a calmer spell, 4-6 % and 4-6 points. The
client is the light one (benchmarks/light_client.py: plain HTTP and SSE), so it takes little of the
cores the server needs. ``--threads N`` runs both
sides with N torch threads (the server through GPT_EXPLORER_THREADS); without it each side keeps its
default (the server's policy: every core, and decode passes at the count its loop timed faster;
``--server-log FILE`` keeps the app's log, where each choice is written). ``--raw-threads 1 2``
runs raw ``generate`` at each of those thread counts in every round, and the served stream is held
against the fastest of them (by median): the best the model itself does on these cores, whatever the
server's thread policy.

    python benchmarks/bench_generate.py --raw-threads 1 2             # the policy against raw at 1 and 2
    python benchmarks/bench_generate.py --threads 2 --raw-threads 1 2   # a fixed 2 threads against the same
    taskset -c 0 python benchmarks/bench_generate.py                    # one core (server and raw)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def wait_for(url: str, proc, timeout: float = 180):
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the app did not start in time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_gpt2_small_random(path: Path) -> Path:
    """GPT-2 small's body (12 layers x 768, context 1024) with random weights and the bundled tokenizer's
    8,192-token vocabulary: with GPT-2's 50,257 the random model would mostly emit ids that this
    tokenizer cannot decode, and nothing would stream."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "gutenberg-gpt")
    torch.manual_seed(0)
    eos = tok.eos_token_id
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                               bos_token_id=eos, eos_token_id=eos)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def start_app(cmd: list[str], env: dict | None = None, log_path: str | None = None) -> subprocess.Popen:
    """Start the app with ``cmd``; its output goes to ``log_path`` (the app's log: e.g. the thread counts
    its decode loop chose), else nowhere."""
    if not log_path:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log_path, "w") as out:  # the app keeps its own copy of the file
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)


def app_command(args, port: int) -> tuple[list[str], list[str]]:
    """The command that serves the app for a benchmark (``args``: --model, --precision,
    --gpt2-small-random), and the catalogue entries it adds. Sets ``args.model`` for the random model."""
    extra = []
    if args.gpt2_small_random:
        import tempfile

        path = save_gpt2_small_random(Path(tempfile.mkdtemp(prefix="gpt2-small-random-")))
        args.model = "gpt2-small-random"
        extra = [f"{args.model}={path}"]
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--precision", args.precision]
    if args.model:
        cmd += ["--model", args.model]
    for e in extra:
        cmd += ["--add-model", e]
    return cmd, extra


def raw_runner(loaded, prompt: str):
    """``run(k)``: seconds of one greedy ``generate`` of exactly ``k`` new tokens in this process."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    ids = tok(prompt, return_tensors="pt").input_ids.to(model.device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=tok.eos_token_id,
              eos_token_id=None)  # no early stop: exactly k tokens

    def run(k: int) -> float:
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=k, min_new_tokens=k, **kw)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] - ids.shape[1] == k
        return time.perf_counter() - t

    return run


def client_runner(client, prompt: str, n: int):
    """``run()``: (TTFT ms, decode tokens/s, tokens) of one greedy /generate stream of ``n`` tokens."""
    from demo.core.sampling import SamplingParams

    greedy = SamplingParams(do_sample=False, temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=0)
    args = dict(prompt=prompt, max_new_tokens=n, **greedy.as_dict())

    def run() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        stamps, last = [], None
        for stamp, update in client.stream("generate", **args):
            stamps.append(stamp)
            last = update
        assert last is not None
        count = int(re.search(r"(\d+) tokens generated", last[1]).group(1))
        return (stamps[0] - t0) * 1000, (count - 1) / (stamps[-1] - stamps[0]), count

    return run


def paired_figures(loaded, url: str, prompt: str, n: int, rounds: int,
                   raw_threads: list[int] | None = None) -> tuple[dict[int, dict], dict]:
    """Raw figures for each count of torch threads in ``raw_threads`` (default: the current count) and
    served figures, from ``rounds`` rounds of one run each (every raw thread count, then the served
    stream), after a warm-up of both."""
    import torch
    from light_client import LightClient

    own = torch.get_num_threads()
    counts = raw_threads or [own]
    raw, client = raw_runner(loaded, prompt), LightClient(url)
    served = client_runner(client, prompt, n)
    t1: dict[int, float] = {}
    for k in counts:
        torch.set_num_threads(k)
        raw(n)  # warm-up
        t1[k] = statistics.median(raw(1) for _ in range(max(3, rounds)))
    served()  # warm-up
    raw_rates: dict[int, list[float]] = {k: [] for k in counts}
    runs = []
    for _ in range(rounds):
        for k in counts:
            torch.set_num_threads(k)
            raw_rates[k].append((n - 1) / (raw(n) - t1[k]))
        runs.append(served())
    client.close()
    torch.set_num_threads(own)
    return ({k: {"threads": k, "ttft_ms": t1[k] * 1000, "tokens_per_s": statistics.median(rates),
                 "best_tokens_per_s": max(rates), "runs": rates} for k, rates in raw_rates.items()},
            {"ttft_ms": statistics.median(r[0] for r in runs), "tokens_per_s": statistics.median(r[1] for r in runs),
             "best_tokens_per_s": max(r[1] for r in runs), "tokens": statistics.median(r[2] for r in runs),
             "runs": [r[1] for r in runs]})


def ratio_interval(served: list[float], raw: list[float], draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of median(served) / median(raw), resampling whole rounds (the i-th served
    and raw runs together)."""
    import numpy as np

    s, r = np.asarray(served), np.asarray(raw)
    picks = np.random.default_rng(seed).integers(0, len(s), size=(draws, len(s)))
    ratios = np.median(s[picks], axis=1) / np.median(r[picks], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="catalogue name (default: the bundled model)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15, help="rounds of one raw and one served run each")
    p.add_argument("--prompt", default="It was a dark and stormy night, and the")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the server, and of raw generate unless --raw-threads "
                        "(default: each side's own)")
    p.add_argument("--raw-threads", type=int, nargs="+", default=None, metavar="N",
                   help="raw generate at each of these thread counts, every round (default: as --threads); the "
                        "served stream is compared with the fastest of them")
    p.add_argument("--server-log", default=None, metavar="FILE",
                   help="write the app's log here (e.g. the thread counts its decode loop chose)")
    p.add_argument("--gpt2-small-random", action="store_true",
                   help="a randomly initialised GPT-2-small-size model (12 x 768, vocab 8192) built here, no download")
    args = p.parse_args(argv)

    from demo.runtime.catalog import load_catalog
    from demo.runtime.pool import ModelManager

    # The app runs in its own process, as in production: the client's work must not share its GIL.
    port = free_port()
    cmd, extra = app_command(args, port)
    env = dict(os.environ)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        env["GPT_EXPLORER_THREADS"] = str(args.threads)
    server = start_app(cmd, env, args.server_log)
    try:
        wait_for(f"http://127.0.0.1:{port}/", server)
        manager = ModelManager(load_catalog(extra=extra))
        loaded = manager.load(args.model or manager.names[0], args.precision)
        raws, client = paired_figures(loaded, f"http://127.0.0.1:{port}/", args.prompt, args.tokens, args.repeats,
                                      args.raw_threads)
    finally:
        server.terminate()
        server.wait(timeout=30)
    info = loaded.info()
    raw = max(raws.values(), key=lambda r: r["tokens_per_s"])  # the fastest thread count, by its median
    ratio = client["tokens_per_s"] / raw["tokens_per_s"]
    low, high = ratio_interval(client["runs"], raw["runs"])
    overhead = client["ttft_ms"] - raw["ttft_ms"]
    server_threads = args.threads or "its default"
    print(f"model {info['name']} · {info['device']} · {info['precision']} · {args.tokens} new tokens, greedy, "
          f"median of {args.repeats} rounds · torch threads: {args.threads or 'each side default'}"
          + (f" (raw: {', '.join(map(str, raws))}; server: {server_threads})" if args.raw_threads else ""))
    print(f"{'':28}{'TTFT (ms)':>12}{'tokens/s':>12}{'best run':>12}")
    for k, r in raws.items():
        label = f"raw model.generate, {k} thr" if args.raw_threads else "raw model.generate"
        print(f"{label:28}{r['ttft_ms']:12.1f}{r['tokens_per_s']:12.1f}{r['best_tokens_per_s']:12.1f}")
    print(f"{'served /generate':28}{client['ttft_ms']:12.1f}{client['tokens_per_s']:12.1f}"
          f"{client['best_tokens_per_s']:12.1f}")
    of_best = client["tokens_per_s"] / raw["best_tokens_per_s"]
    best_of_best = client["best_tokens_per_s"] / raw["best_tokens_per_s"]
    against = f" (against raw at {raw['threads']} threads, the fastest)" if len(raws) > 1 else ""
    print(f"served/raw tokens/s (medians){against}: {ratio:.1%} (95% interval {low:.1%}-{high:.1%}; goal >= 90%)   "
          f"served median / best raw run: "
          f"{of_best:.1%}   best served / best raw run: {best_of_best:.1%}   TTFT overhead: {overhead:+.1f} ms "
          f"(goal <= 50 ms)")
    print(f"raw's own median / its best run: {raw['tokens_per_s'] / raw['best_tokens_per_s']:.1%} (what a server "
          f"costing nothing would score as 'served median / best raw run' on this machine in this run)")
    if client["tokens"] != args.tokens:
        print(f"note: the client run stopped after {client['tokens']} tokens (the model ended the text)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": info, "tokens": args.tokens, "server_threads": args.threads,
                                               "raw": raw, "raw_by_threads": list(raws.values()), "client": client,
                                               "ratio": ratio, "ratio_interval_95": [low, high],
                                               "ttft_overhead_ms": overhead}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
