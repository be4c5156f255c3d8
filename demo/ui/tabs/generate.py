"""The Generate tab: prompt, sampling settings, streamed output with Stop and the stats line; under it
the probability-coloured output (:mod:`demo.ui.tabs.token_view`). Also the public ``/generate``
endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from typing import NamedTuple

import gradio as gr

from demo.core.sampling import MAX_NEW_TOKENS, SETTINGS, validate_sampling
from demo.plots.generation import format_stats
from demo.runtime.generation import (
    GenerationRequest,
    GenerationUpdate,
    SliceState,
    StopRequests,
    generate_slice,
    generation_record,
    slice_update,
    start_slices,
    stream_generate,
    validate_request,
)
from demo.runtime.loading import LoadedModel
from demo.runtime.pool import ModelManager
from demo.runtime.zerogpu import SLICE_S, slice_duration, slice_tokens
from demo.ui.common import PRIVATE, AppContext, current_session, event_time, stop_owner, user_errors, with_parameters
from demo.ui.inputs import PRESET_TARGETS, examples, preset_radio, preset_values, sampling_inputs, setting_input
from demo.ui.tabs import token_view

EXAMPLES = [
    "It was a dark and stormy night, and",
    "The old sea captain looked at the boy and said,",
    "Alice was beginning to get very tired of",
    "In the morning the village woke to find that",
    "Once upon a time, in a kingdom by the sea,",
]
# /generate's parameters, in the order the API has always had: the prompt and its length, the
# numeric sampling settings, then the sample/greedy switch and the seed (named as in transformers).
SAMPLING_ORDER = ([s.name for s in SETTINGS if s.kind in ("float", "int")]
                  + [s.name for s in SETTINGS if s.kind in ("bool", "seed")])
API_PARAMETERS = ["prompt", MAX_NEW_TOKENS.name, *SAMPLING_ORDER]

# ----------------------------------------------------------------------------- handlers


class GenerateHandlers:
    """``run_slice`` set (on ZeroGPU): generation runs in slices of about a second, each its own GPU
    call (:meth:`slice`), so a Stop frees the GPU within a slice; else one streamed generation."""

    def __init__(self, manager: ModelManager, run_slice: Callable | None = None, stops: StopRequests | None = None):
        self.manager = manager
        self.run_slice = run_slice
        self.stops = stops or StopRequests()

    def stop(self) -> None:
        """Stop this visitor's generations that were requested before this Stop: each ends at its next
        check with a last update that keeps its text (see :class:`demo.runtime.generation.StopRequests`)."""
        self.stops.request(stop_owner("generate"), event_time())

    @staticmethod
    def slice(loaded: LoadedModel, request: GenerationRequest, state: SliceState, max_tokens: int) -> SliceState:
        """One slice of a generation (runs where the model is: a ZeroGPU worker)."""
        return generate_slice(loaded, request, state, max_tokens, SLICE_S)

    @user_errors
    def generate(self, prompt, max_new_tokens, *sampling) -> Iterator[tuple[str, str, dict | None]]:
        """Stream a continuation of `prompt`. Each update is (text generated so far, stats line, the
        generation's record once it is done). ``sampling`` values come in :data:`SAMPLING_ORDER`."""
        # the event skips Gradio's preprocessing: the values are checked here, within the sliders' ranges
        stop = self.stops.signal(stop_owner("generate"), event_time())
        params = validate_sampling(slider=True, **dict(zip(SAMPLING_ORDER, sampling)))
        request = validate_request(prompt, MAX_NEW_TOKENS.check(max_new_tokens, slider=True), params)
        with self.manager.use(current_session()) as loaded:  # not unloaded while it generates
            yield from self._stream(loaded, request, stop)

    def _stream(self, loaded: LoadedModel, request: GenerationRequest, stop: Callable[[], bool] = lambda: False
                ) -> Iterator[tuple[str, str, dict | None]]:
        stream: Generator[GenerationUpdate, None, None]
        if self.run_slice is None:
            stream = stream_generate(loaded, request, stop=stop)
        else:
            stream = self._sliced(loaded, request, stop)

        def record(update):  # stamped with the model that generated, even if another loads meanwhile
            return generation_record(loaded, request.prompt, update, {
                **request.sampling.as_dict(), "seed": update.seed, "max_new_tokens": request.max_new_tokens})

        # The record is set at the end; the first update clears the last one, and the others leave it
        # as it is (gr.skip): Gradio rebuilds a State's configuration at each value it is given.
        try:  # the stream paces its updates (demo.runtime.generation.update_interval)
            unchanged = None
            for update in stream:
                yield update.text, format_stats(update), record(update) if update.done else unchanged
                unchanged = gr.skip()
        finally:
            stream.close()  # also on GeneratorExit (Stop, a closed tab): stops the model


    def _sliced(self, loaded: LoadedModel, request: GenerationRequest, stop: Callable[[], bool] = lambda: False
                ) -> Generator[GenerationUpdate, None, None]:
        """The updates of a generation made of slices; closing this generator, or a Stop, requests no
        more slices."""
        run_slice = self.run_slice
        assert run_slice is not None, "slices run only where a slice runner is set (ZeroGPU)"
        state, started = start_slices(loaded, request), time.perf_counter()
        while not state.done:
            if stop():
                yield slice_update(loaded, replace(state, done=True, stop_reason="stopped"), started)
                return
            n = slice_tokens(state.tokens_per_s, request.max_new_tokens - len(state.generated))
            state = run_slice(loaded, request, state, n)  # each slice on this generation's model
            yield slice_update(loaded, state, started)


# ----------------------------------------------------------------------------- layout and wiring


class GenerateLayout(NamedTuple):
    prompt: gr.Textbox
    generate: gr.Button
    stop: gr.Button
    output: gr.Textbox
    stats: gr.Markdown
    to_attention: gr.Button
    to_next_token: gr.Button
    preset: gr.Radio
    max_new_tokens: gr.components.Component
    settings: dict  # sampling setting name -> input
    last_generation: gr.State  # the record of the last generation (GenerationRecord)
    token_view: token_view.TokenViewLayout


def layout() -> GenerateLayout:
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=4, value=EXAMPLES[0], max_lines=20,
                                placeholder="Type the beginning of a text…", elem_id="prompt")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            output = gr.Textbox(label="Generated text", lines=8, max_lines=30, interactive=False,
                                buttons=["copy"], elem_id="output")
            stats = gr.Markdown("", elem_classes="stats")
            with gr.Row(elem_id="to-analysis"):
                to_attention = gr.Button("See its attention →", size="sm")
                to_next_token = gr.Button("Explore the next token →", size="sm")
            examples(EXAMPLES, inputs=[prompt], label="Example prompts", elem_id="generate-examples")
        with gr.Column(scale=2, elem_classes="settings-col"), gr.Accordion("Sampling settings", open=True):
            preset = preset_radio()
            max_new_tokens = setting_input(MAX_NEW_TOKENS)
            settings = sampling_inputs()
    last_generation = gr.State(None)
    return GenerateLayout(prompt, generate, stop, output, stats, to_attention, to_next_token, preset, max_new_tokens,
                          settings, last_generation, token_view.layout())


class GenerateTab(NamedTuple):
    """What the page shell connects to the other tabs."""

    prompt: gr.Textbox
    output: gr.Textbox
    controls: dict  # setting name -> input, plus 'preset' and 'max_new_tokens'
    to_attention: gr.Button
    to_next_token: gr.Button
    last_generation: gr.State  # the record of the last generation
    position: gr.Dropdown  # the selected generated token
    step_to_attention: gr.Button  # open the selected token's step in the other tabs
    step_to_next_token: gr.Button
    run: dict  # ``.then(**run)``: generate from what the tab's inputs hold (as Generate does)
    after_run: dict  # ``.then(**after_run)``: the coloured view of that generation


def wire(ui: GenerateLayout, gen: GenerateHandlers, ctx: AppContext) -> GenerateTab:
    on_generation = token_view.wire(ui.token_view, ctx, ui.last_generation, ui.prompt)
    inputs = [ui.prompt, ui.max_new_tokens] + [ui.settings[n] for n in SAMPLING_ORDER]
    outputs = [ui.output, ui.stats, ui.last_generation]
    generate = with_parameters(gen.generate, API_PARAMETERS)
    # preprocess=False: the handler checks the raw values itself (as the inputs' preprocess would),
    # which saves Gradio's preprocessing a thread hop per input on every request. postprocess=False:
    # the text and the stats line go out as the handler gives them (the Textbox's str() and the
    # Markdown's inspect.cleandoc change nothing for these strings), which saves two thread hops per update.
    limit = {**ctx.generate_queue, "preprocess": False, "postprocess": False}
    run = dict(fn=generate, inputs=inputs, outputs=outputs, **PRIVATE, **limit)
    for event in (ui.generate.click(generate, inputs, outputs, api_name="generate", **limit),
                  ui.prompt.submit(**run)):
        event.then(**on_generation)
    # Stop is a request the generation answers itself (a last update that keeps the text, the record for
    # the coloured view): no cancel of the event, whose race with the stream's end showed an error.
    ui.stop.click(gen.stop, None, None, **PRIVATE, **ctx.stop_queue)
    ui.preset.change(preset_values, ui.preset, [ui.settings[n] for n in PRESET_TARGETS], **PRIVATE)
    tv = ui.token_view
    return GenerateTab(ui.prompt, ui.output, {**ui.settings, "preset": ui.preset, "max_new_tokens": ui.max_new_tokens},
                       ui.to_attention, ui.to_next_token, ui.last_generation, tv.position, tv.to_attention,
                       tv.to_next_token, run, on_generation)


def build(tab: gr.Tab, ctx: AppContext) -> GenerateTab:
    """The Generate tab's contents, built inside ``tab``."""
    gen = GenerateHandlers(ctx.manager, stops=ctx.stops)
    if ctx.settings.zero_gpu:
        gen.run_slice = ctx.gpu(gen.slice, duration=lambda request, state, n: slice_duration(n, state.tokens_per_s))
    return wire(layout(), gen, ctx)
