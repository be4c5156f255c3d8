"""The Gradio Blocks page: model picker, Generate tab, and the analysis tabs. No model logic here:
handlers validate their inputs, call the backend / analysis functions and format what they return."""

from __future__ import annotations

import html
import os
import time
from typing import Iterator

import gradio as gr

from . import backend
from . import next_token as nt
from .backend import PRECISIONS, GenerationUpdate, ModelManager
from .components import MODEL_QUEUE, CheckedSlider, ChoiceDropdown, SeedNumber
from .errors import ExplorerError
from .gpu import gpu
from .sampling import PRESETS, SamplingParams, validate_sampling

TITLE = "GPT Explorer"
MIN_UPDATE_INTERVAL_S = 1 / 50  # at most 50 streamed updates a second per generation
EXAMPLES = [
    "It was a dark and stormy night, and",
    "The old sea captain looked at the boy and said,",
    "Alice was beginning to get very tired of",
    "In the morning the village woke to find that",
    "Once upon a time, in a kingdom by the sea,",
]
CSS = """
.stats { font-size: 0.9em; opacity: 0.85; }
.model-status { font-size: 0.95em; }
footer { display: none !important; }
"""


def as_gr_error(exc: Exception) -> gr.Error:
    """A user-facing error. Our own errors carry a complete sentence; anything else gets a short prefix."""
    if isinstance(exc, ExplorerError):
        return gr.Error(str(exc), print_exception=False)
    return gr.Error(f"Something went wrong: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- formatting (pure)


def format_model_status(manager: ModelManager) -> str:
    cur = manager.current
    if cur is None:
        why = manager.last_error or "loading…"
        return f"⚠️ **No model loaded.** {html.escape(why)}"
    i = cur.info()
    return (f"**{html.escape(i['name'])}** · {i['device']} · {i['precision']} ({i['precision_label']}) · "
            f"{i['memory_mb']:,} MB in memory · {i['parameters'] / 1e6:,.1f} M parameters · "
            f"context {i['context_length']} tokens")


def format_stats(u: GenerationUpdate) -> str:
    parts = []
    if u.ttft_s is not None:
        parts.append(f"first token after {u.ttft_s * 1000:,.0f} ms")
    if u.tokens_per_s is not None:
        parts.append(f"{u.tokens_per_s:,.1f} tokens/s")
    parts.append(f"{u.n_tokens} tokens generated")
    if u.seed is not None:
        parts.append(f"seed {u.seed}")
    if u.done:
        parts.append({"length": "reached max new tokens", "end of text": "model ended the text"}.get(
            u.stop_reason or "", u.stop_reason or ""))
    line = " · ".join(parts)
    if u.truncated_tokens:
        line += (f"\n\n⚠️ The prompt was longer than the model's context window: the first {u.truncated_tokens} "
                 f"tokens were dropped and the model saw the last {u.prompt_tokens}.")
    return line


# ----------------------------------------------------------------------------- handlers


def make_generate(manager: ModelManager):
    @gpu
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
                 no_repeat_ngram_size, do_sample, seed) -> Iterator[tuple[str, str, dict | None]]:
        """Stream a continuation of `prompt`. Each update is (text generated so far, stats line)."""
        try:
            params = validate_sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                       min_p=min_p, repetition_penalty=repetition_penalty,
                                       no_repeat_ngram_size=no_repeat_ngram_size, seed=seed)
            request = backend.validate_request(prompt, max_new_tokens, params)
            loaded = manager.require()
            stream = backend.stream_generate(loaded, request)
            first = next(stream)  # validation that needs the model (context window) happens here
        except Exception as exc:  # noqa: BLE001
            raise as_gr_error(exc) from exc
        def record(update):  # stamped with the model that generated, even if another loads meanwhile
            return nt.generation_record(loaded, request.prompt, update, {
                **params.as_dict(), "seed": update.seed, "max_new_tokens": request.max_new_tokens})

        try:
            yield first.text, format_stats(first), record(first) if first.done else None
            last_sent = time.perf_counter()
            for update in stream:
                if update.done:
                    yield update.text, format_stats(update), record(update)
                elif time.perf_counter() - last_sent >= MIN_UPDATE_INTERVAL_S:
                    # Faster than the eye can follow: tokens that arrive within one interval share a
                    # message, which keeps the server's per-message cost off the model's speed.
                    yield update.text, format_stats(update), None
                    last_sent = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - GeneratorExit is not an Exception: a Stop passes through
            raise as_gr_error(exc) from exc
        finally:
            stream.close()

    return generate


def make_load_model(manager: ModelManager):
    def load_model(name, precision, progress=gr.Progress()):
        """Load a catalogue model. On failure the previous model keeps serving and the error is shown."""
        try:
            progress(0.0, desc=f"Loading {name}…")
            manager.load(name, precision, progress=lambda frac, msg: progress(frac, desc=msg))
        except ExplorerError as exc:
            gr.Warning(str(exc))
            return format_model_status(manager) + f"\n\n❌ {html.escape(str(exc))}"
        return format_model_status(manager)

    return load_model


def apply_preset(name):
    p = PRESETS.get(name)
    if p is None:
        return [gr.update()] * 8
    return [p.do_sample, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.no_repeat_ngram_size,
            gr.update()]


# ----------------------------------------------------------------------------- layout


def sampling_controls(defaults: SamplingParams = PRESETS["Balanced"]) -> dict:
    """The sampling sliders (shared by the Generate and Next-token tabs through the same components)."""
    c = {}
    c["preset"] = gr.Radio(list(PRESETS), value="Balanced", label="Preset", info="Sets the sliders below")
    c["max_new_tokens"] = CheckedSlider(1, 512, value=80, step=1, name="max_new_tokens", integer=True,
                                        label="Max new tokens")
    c["do_sample"] = gr.Checkbox(value=defaults.do_sample, label="Sample (off = greedy: always the most likely token)")
    c["temperature"] = CheckedSlider(0.05, 2.0, value=defaults.temperature, step=0.05, name="temperature",
                                     label="Temperature", info="Below 1 sharpens the distribution, above 1 flattens it")
    c["top_k"] = CheckedSlider(0, 200, value=defaults.top_k, step=1, name="top_k", integer=True, label="Top-k",
                               info="Keep only the k most likely tokens (0 = off)")
    c["top_p"] = CheckedSlider(0.05, 1.0, value=defaults.top_p, step=0.01, name="top_p", label="Top-p (nucleus)",
                               info="Keep the smallest set of likely tokens whose probabilities add up to p")
    c["min_p"] = CheckedSlider(0.0, 0.5, value=defaults.min_p, step=0.01, name="min_p", label="Min-p",
                               info="Drop tokens less likely than min-p × the top token's probability (0 = off)")
    c["repetition_penalty"] = CheckedSlider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05,
                                            name="repetition_penalty", label="Repetition penalty",
                                            info="Above 1 discourages tokens already in the text")
    c["no_repeat_ngram_size"] = CheckedSlider(0, 10, value=defaults.no_repeat_ngram_size, step=1, integer=True,
                                              name="no_repeat_ngram_size", label="No-repeat n-gram size",
                                              info="Forbid repeating any run of n tokens (0 = off)")
    c["seed"] = SeedNumber(value=-1, precision=0, label="Seed",
                           info="-1 = random; the same seed and settings give the same text")
    return c


GEN_INPUTS = ["max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
              "no_repeat_ngram_size", "do_sample", "seed"]


def build_app(manager: ModelManager, concurrency: int | None = None) -> gr.Blocks:
    from .ui_attention import build_attention_tab
    from .ui_next_token import build_next_token_tab, build_token_view

    concurrency = concurrency or int(os.environ.get("GPT_EXPLORER_CONCURRENCY", 4 if manager.device == "cuda" else 2))
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nTry a GPT language model and see inside it: generate text, watch where each "
                    "attention head looks, and see the probability of every possible next token.")
        with gr.Row(equal_height=True):
            model_dd = ChoiceDropdown(manager.names, value=manager.current.name if manager.current else None,
                                      label="Model", scale=2)
            precision_dd = ChoiceDropdown(list(PRECISIONS),
                                          value=manager.current.precision if manager.current else "auto",
                                          label="Precision", scale=1, info="auto = 8-bit on GPU, fp32 on CPU")
            load_btn = gr.Button("Load model", scale=1)
        model_status = gr.Markdown(format_model_status(manager), elem_classes="model-status")

        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", lines=4, value=EXAMPLES[0], max_lines=20,
                                            placeholder="Type the beginning of a text…")
                        with gr.Row():
                            gen_btn = gr.Button("Generate", variant="primary")
                            stop_btn = gr.Button("Stop", variant="stop")
                        output = gr.Textbox(label="Generated text", lines=8, max_lines=30, interactive=False,
                                            buttons=["copy"], elem_id="output")
                        stats = gr.Markdown("", elem_classes="stats")
                        with gr.Row():
                            to_attention = gr.Button("See its attention →", size="sm")
                            to_next = gr.Button("Explore the next token →", size="sm")
                        gr.Examples(EXAMPLES, inputs=[prompt], label="Example prompts")
                    with gr.Column(scale=2):
                        with gr.Accordion("Sampling settings", open=True):
                            controls = sampling_controls()
                last_generation = gr.State(None)
                token_view = build_token_view(manager, last_generation, prompt, controls)

            with gr.Tab("Attention", id="attention"):
                attention = build_attention_tab(manager)
            with gr.Tab("Next token", id="next_token"):
                next_token = build_next_token_tab(manager, controls)
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)

        gen_inputs = [prompt] + [controls[k] for k in GEN_INPUTS]
        gen_event = gen_btn.click(make_generate(manager), gen_inputs, [output, stats, last_generation],
                                  api_name="generate", **{**MODEL_QUEUE, "concurrency_limit": concurrency})
        submit_event = prompt.submit(make_generate(manager), gen_inputs, [output, stats, last_generation],
                                     api_visibility="private", **{**MODEL_QUEUE, "concurrency_limit": concurrency})
        for ev in (gen_event, submit_event):
            ev.then(**token_view["on_generation"])
        stop_btn.click(None, None, None, cancels=[gen_event, submit_event], api_visibility="private")
        controls["preset"].change(apply_preset, controls["preset"],
                                  [controls[k] for k in ("do_sample", "temperature", "top_k", "top_p", "min_p",
                                                         "repetition_penalty", "no_repeat_ngram_size", "seed")],
                                  api_visibility="private")
        load_btn.click(make_load_model(manager), [model_dd, precision_dd], model_status, api_name="load_model",
                       concurrency_limit=1, concurrency_id="load")
        to_attention.click(lambda p, o: p + o, [prompt, output], attention["text"], api_visibility="private").then(
            lambda: gr.Tabs(selected="attention"), None, tabs, api_visibility="private").then(**attention["on_text"])
        to_next.click(lambda p, o: p + o, [prompt, output], next_token["text"], api_visibility="private").then(
            lambda: gr.Tabs(selected="next_token"), None, tabs, api_visibility="private").then(**next_token["on_text"])
        demo.load(lambda: format_model_status(manager), None, model_status, api_visibility="private")
    return demo


ABOUT = """
### What is this?
A GPT is a neural network that reads a text as a row of **tokens** (words or pieces of words) and, at
every position, gives a probability to each possible next token. Generating text means picking one of
those tokens, appending it, and repeating.

* **Generate** — type a prompt and watch the model continue it token by token. The sampling settings
  decide how the next token is picked from the model's probabilities.
* **Attention** — inside each layer, every *attention head* decides how much each token looks at the
  tokens before it. The heatmaps show those weights.
* **Next token** — the model's probabilities for the next token, before and after the sampling
  settings filter them. You can drive the model one token at a time.

The default model, **gutenberg-gpt**, is a small GPT-2 this project trained from scratch on 147
public-domain books (see `models/gutenberg-gpt/README.md`). It writes 19th-century-flavoured prose, often
ungrammatical: it is small on purpose, so it runs anywhere. It is not a chat model.
"""
