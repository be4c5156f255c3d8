"""Benchmark of the Attention tab (a script, not a test).

    python benchmarks/bench_attention.py                 # both models, 64/256/512 tokens
    python benchmarks/bench_attention.py --models bundled --lengths 64 256 --repeats 5

For each model and text length it times, on this machine's CPU (or GPU with --device cuda):

* extract: one forward pass returning every layer's and head's attention (demo.analysis.attention.compute_attention,
  no cache), median of --repeats runs;
* switch: the server time of a layer/head change on the cached text, i.e. the tab's own handler plus what
  Gradio does with its outputs (figure -> JSON); median over --switches distinct (layer, head) pairs, for
  the one-head view and, for reference, the all-heads / average / one-token views.

Models: the bundled gutenberg-gpt (4 layers, 256 wide, 4 heads, context 512) and a randomly initialised
GPT-2-small-size model built here (12 layers, 768 wide, 12 heads, vocab 50257, context 1024; no download).
Goal: switch <= 100 ms at 256 tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from demo.analysis import attention as A
from demo.runtime.catalog import ModelSpec
from demo.runtime.loading import LoadedModel, load_model

BUNDLED = REPO / "models" / "gutenberg-gpt"
SOURCE_TEXT = (
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals, when it was "
    "checked by a violent gust of wind which swept up the streets, rattling along the house-tops, and fiercely "
    "agitating the scanty flame of the lamps that struggled against the darkness. The old captain sat by the fire "
    "and told the boy of the sea, of the ships he had known and the men who had sailed them, and of the long "
    "voyages to the south where the stars are strange and the nights are warm. ")


def gpt2_small_random(device: str) -> LoadedModel:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(BUNDLED)  # any byte-level BPE tokenizer: its ids fit the 50257 vocab
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval().to(device)
    return LoadedModel(ModelSpec("gpt2-small-random", "random init"), model, tok, device, "fp32", 0.0)


def text_of(tokenizer, n: int) -> str:
    """A text of about `n` tokens (exact after a re-tokenization check)."""
    ids = tokenizer(SOURCE_TEXT * (n // 40 + 2), add_special_tokens=False, verbose=False)["input_ids"]
    for extra in range(0, 8):
        text = tokenizer.decode(ids[: n + extra])
        got = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if got >= n:
            return tokenizer.decode(ids[:n]) if got > n else text
    return tokenizer.decode(ids[:n])


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def switch_ms(handlers, result, view: str, pairs: list[tuple[int, int]]) -> float:
    """Median server time of one switch: handler + postprocessing of its outputs as Gradio does."""
    import gradio as gr

    plot = gr.Plot(render=False)  # the strip update is built (and postprocessed) inside the handler
    times = []
    for layer, head in pairs:
        t0 = time.perf_counter()
        shown = handlers.switch(result.text, result.text, view, layer, head, "mean-heads", None, "layer")
        plot.postprocess(shown.plot)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["bundled", "gpt2-small"], choices=["bundled", "gpt2-small"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 512])
    ap.add_argument("--repeats", type=int, default=3, help="forward passes timed per length")
    ap.add_argument("--switches", type=int, default=12, help="layer/head switches timed per view")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from demo.core.cache import ModelCache
    from demo.runtime.pool import ModelManager
    from demo.ui.tabs.attention import AttentionHandlers

    rows = []
    for name in args.models:
        loaded = (load_model(ModelSpec("gutenberg-gpt", str(BUNDLED)), "fp32", device=args.device)
                  if name == "bundled" else gpt2_small_random(args.device))
        cfg = loaded.model.config
        cache = ModelCache()
        manager = ModelManager([loaded.spec], device=args.device)
        manager.add(loaded)  # the model every session uses, without loading it again
        handlers = AttentionHandlers(manager, cache)
        for n in args.lengths:
            text = text_of(loaded.tokenizer, n)
            A.compute_attention(loaded, text)  # warm-up
            extract = median_ms(lambda m=loaded, t=text: A.compute_attention(m, t), args.repeats)
            cache.clear()
            result = A.attention_of(loaded, text, cache)
            pairs = [(i % result.n_layers, (i * 7) % result.n_heads) for i in range(args.switches)]
            switch_ms(handlers, result, "head", pairs[:2])  # warm-up
            row = dict(model=name, shape=f"{cfg.n_layer}L x {cfg.n_head}H x {cfg.n_embd}", tokens=result.n_tokens,
                       extract=extract, mb=result.nbytes / 2**20,
                       head=switch_ms(handlers, result, "head", pairs),
                       heads=switch_ms(handlers, result, "heads", pairs[: max(3, args.switches // 3)]),
                       aggregate=switch_ms(handlers, result, "aggregate", pairs[: max(3, args.switches // 3)]),
                       token=switch_ms(handlers, result, "token", pairs[: max(3, args.switches // 3)]),
                       misses=cache.misses)
            rows.append(row)
            print(f"  {name} {row['tokens']} tokens done", file=sys.stderr, flush=True)
        del loaded, handlers, manager
        cache.clear()

    print(f"\nAttention tab benchmark — device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs visible")
    head = (f"| {'model':<18} | {'layers x heads x width':<22} | {'tokens':>6} | {'extract ms':>10} "
            f"| {'weights MB':>10} "
            f"| {'switch head ms':>14} | {'all heads ms':>12} | {'average ms':>10} | {'one token ms':>12} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['model']:<18} | {r['shape']:<22} | {r['tokens']:>6} | {r['extract']:>10.0f} | {r['mb']:>10.1f} "
              f"| {r['head']:>14.1f} | {r['heads']:>12.1f} | {r['aggregate']:>10.1f} | {r['token']:>12.1f} |")
    worst = [r["head"] for r in rows if r["tokens"] == 256]
    if worst:
        verdict = "OK" if max(worst) <= 100 else "OVER"
        print(f"\nGoal switch <= 100 ms at 256 tokens: worst {max(worst):.1f} ms -> {verdict}")
    print("Switches ran no forward pass:", all(r["misses"] == 1 for r in rows))


if __name__ == "__main__":
    main()
