"""Next-token tab timings: refreshing the bars after a slider change, and appending one token with the tab's buttons.

    python benchmarks/bench_next_token.py                       # bundled model, CPU, fp32
    python benchmarks/bench_next_token.py --model gpt2 --precision int8 --repeats 30
    python benchmarks/bench_next_token.py --no-client           # skip the gradio_client round trip

Server time is the handler the page calls (validation, the distribution, the plotly figure and the
text), timed in-process. A slider change finds the raw logits in the cache and must not run the model:
the script counts the model's forward calls to prove it. Appending a token makes a new text,
and the model runs once (a full forward over the window, no KV cache: the view also needs the model's
state only at the last position). "cold" is a text the cache has never seen. Figures are medians (and
90th percentiles) over --repeats runs, for a short prompt and for a text that fills the context window.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHORT = "It was a dark and stormy night, and the"
def _moves() -> list[list]:
    """Slider positions a student might try, as the tab's input values (demo.core.sampling.NAMES order)."""
    from demo.core.sampling import PRESETS, SamplingParams

    params = [PRESETS["Balanced"], SamplingParams(temperature=0.5), SamplingParams(temperature=1.5),
              SamplingParams(temperature=1.0, top_k=40), SamplingParams(temperature=1.0, top_k=40, top_p=0.6),
              SamplingParams(temperature=1.0, top_p=1.0, min_p=0.1),
              SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.6, no_repeat_ngram_size=3),
              PRESETS["Greedy"]]
    return [[-1 if v is None else v for v in p.values()] for p in params]


SLIDER_MOVES = _moves()


def ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 2),
            "p90_ms": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))] * 1000, 2), "n": len(xs)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_text(loaded, n_tokens: int) -> str:
    """A book-like text of about n_tokens tokens (the held-out passage repeated if need be)."""
    src = ROOT / "tests" / "data" / "held_out_passage.txt"
    base = src.read_text() if src.exists() else (SHORT + " ") * 50
    text = base
    while len(loaded.tokenizer(text)["input_ids"]) < n_tokens:
        text += "\n" + base
    ids = loaded.tokenizer(text)["input_ids"][:n_tokens]
    return loaded.tokenizer.decode(ids)


def bench_text(h, loaded, text: str, repeats: int, appends: int) -> dict:
    from demo.analysis import next_token as nt
    from demo.core.validation import encode_text

    calls = []
    hook = loaded.model.register_forward_hook(lambda *a: calls.append(1))
    out = {"tokens": len(encode_text(loaded.tokenizer, text).ids)}
    try:
        # cold: a text never seen (a different last character each time) -> one forward + everything else
        cold = []
        for i in range(repeats):
            t = time.perf_counter()
            h.refresh(f"{text} {i}", None, 20, "", *SLIDER_MOVES[0])
            cold.append(time.perf_counter() - t)
        out["cold_refresh"] = ms(cold)

        # warm: slider moves on a cached text; the model must not run
        state = h.refresh(text, None, 20, "", *SLIDER_MOVES[0])[1]
        before = len(calls)
        warm, analysis = [], []
        for i in range(repeats):
            move = SLIDER_MOVES[i % len(SLIDER_MOVES)]
            t = time.perf_counter()
            h.refresh(text, state, 20, "", *move)
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            h.analyse(text, state, 20, move)
            analysis.append(time.perf_counter() - t)
        out["slider_refresh"] = ms(warm)
        out["slider_refresh_analysis_only"] = ms(analysis)
        out["model_forwards_during_slider_refreshes"] = len(calls) - before
        bars50 = []
        for i in range(max(3, repeats // 3)):
            t = time.perf_counter()
            h.refresh(text, state, 50, "", *SLIDER_MOVES[i % len(SLIDER_MOVES)])
            bars50.append(time.perf_counter() - t)
        out["slider_refresh_50_bars"] = ms(bars50)

        # the buttons: each appends a token (a new text: one forward) and redraws the view
        for mode, settings in (("most likely", SLIDER_MOVES[0]), ("sampled", SLIDER_MOVES[0][:-1] + [42])):
            cur, st, times = text, state, []
            before = len(calls)
            for _ in range(appends):
                t = time.perf_counter()
                res = h.append(mode, cur, st, 20, "", None, *settings)
                times.append(time.perf_counter() - t)
                cur, st = res[0], res[1]
            out[f"append_{mode.replace(' ', '_')}"] = ms(times)
            out[f"model_forwards_per_{mode.replace(' ', '_')}_append"] = (len(calls) - before) / appends
        # the model alone, for comparison
        window, _ = nt.model_window(loaded, list(encode_text(loaded.tokenizer, text).ids))
        fwd = []
        for _ in range(repeats):
            t = time.perf_counter()
            nt.forward_last_logits(loaded, window)
            fwd.append(time.perf_counter() - t)
        out["model_forward_only"] = ms(fwd)
        lens = []
        for _ in range(max(3, repeats // 3)):
            t = time.perf_counter()
            h.lens(text, state, 16)
            lens.append(time.perf_counter() - t)
        out["logit_lens_16_positions"] = ms(lens)
    finally:
        hook.remove()
    return out


def bench_client(demo, text: str, repeats: int) -> dict:
    from gradio_client import Client

    from demo.core.sampling import NAMES

    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(text=text, api_name="/next_token")  # warm the cache
        times = []
        for i in range(repeats):
            move = SLIDER_MOVES[i % len(SLIDER_MOVES)]
            kw = {name: value for name, value in zip(NAMES, move) if name != "seed"}
            t = time.perf_counter()
            client.predict(text=text, top_n=20, api_name="/next_token", **kw)
            times.append(time.perf_counter() - t)
        return {"next_token_api_round_trip_cached": ms(times)}
    finally:
        demo.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="catalogue name (default: the bundled model)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--appends", type=int, default=20, help="tokens appended per button (most likely, sampled)")
    p.add_argument("--no-client", action="store_true", help="skip the gradio_client round trip")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    import torch

    from demo.app_factory import create_app
    from demo.ui.tabs.next_token import NextTokenHandlers

    demo, _ = create_app(model=args.model, precision=args.precision)
    manager = demo.manager
    loaded = manager.require()
    info = loaded.info()
    print(f"model {info['name']} · {info['device']} · {info['precision']} · {info['parameters'] / 1e6:.1f} M params · "
          f"context {info['context_length']} · torch threads {torch.get_num_threads()}")
    h = NextTokenHandlers(manager, demo.cache)
    results = {"model": info, "short": bench_text(h, loaded, SHORT, args.repeats, args.appends)}
    full = long_text(loaded, loaded.context_length - args.appends - 2)
    results["full_context"] = bench_text(h, loaded, full, max(5, args.repeats // 2), args.appends)
    if not args.no_client:
        results["client"] = bench_client(demo, SHORT, args.repeats)

    for name in ("short", "full_context"):
        r = results[name]
        print(f"\n== {name} text ({r['tokens']} tokens)")
        for key, v in r.items():
            if isinstance(v, dict):
                print(f"  {key:<36} median {v['median_ms']:>8.2f} ms   p90 {v['p90_ms']:>8.2f} ms   (n={v['n']})")
            elif key != "tokens":
                print(f"  {key:<36} {v}")
    if "client" in results:
        v = results["client"]["next_token_api_round_trip_cached"]
        print(f"\n== gradio_client /next_token, cached text, new settings each call\n"
              f"  round trip                           median {v['median_ms']:>8.2f} ms   p90 {v['p90_ms']:>8.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
