"""The 8-bit tab ("The cost of 8 bits"): one text through the visitor's checkpoint in 8-bit and in full
precision, compared token by token (KL divergence, top-1 agreement, top-10 overlap, attention
differences per layer), with a summary line, a figure, exports and the public ``/compare_precision``
endpoint. The second precision is loaded on demand into the server's model pool."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import NamedTuple

import gradio as gr

from demo.analysis.precision import compare_precisions, compared_precisions, comparison_of, summary_line
from demo.core.cache import ModelCache
from demo.core.exports import ExportFolder
from demo.core.validation import check_text
from demo.plots import precision as plots
from demo.runtime.pool import ModelManager
from demo.ui.common import PRIVATE, AppContext, current_session, export_controls, user_errors

DEFAULT_TEXT = ("The old miller walked down to the village in the rain. He had not been there for many years, and "
                "the road was longer than he remembered. At the inn, the landlord looked up from the fire and said "
                "that he had been expecting him.")
INTRO = """**What does squeezing a model into 8 bits cost?** On a GPU this app stores a model's weights in
8 bits (bitsandbytes' LLM.int8) to use a quarter of the memory of 32-bit floats. Here the same text goes through
the same checkpoint twice: in 8-bit and in full precision, and the two are compared at every position of the text."""
NOTE = """**How to read it.** *Top:* for each position, how far the 8-bit model's next-token probabilities
are from the full-precision ones: the **KL divergence** in bits (0 = identical; 0.01 bits is a tiny nudge, 1 bit is
like doubling or halving the likely tokens' odds). Red circles mark positions where the **most likely next token
changed** (greedy decoding would write something else there). *Bottom:* for each layer, the largest and the mean
change of an **attention weight** (each weight is between 0 and 1), over every head. Hover for the tokens."""


def memory_line(data: dict, loaded_now: list[str]) -> str:
    line = (f"Memory: {data['other_precision']} {data['other_memory_mb']:,.1f} MB vs {data['reference_precision']} "
            f"{data['reference_memory_mb']:,.1f} MB ({data['other_memory_mb'] / data['reference_memory_mb']:.0%}). "
            f"Forward pass: {data['other_seconds']:.2f} s vs {data['reference_seconds']:.2f} s.")
    if loaded_now:
        line += (f" Loaded for this comparison: {', '.join(loaded_now)} (kept in the server's model pool while "
                 "memory allows; your own model is unchanged).")
    return line


class Compared(NamedTuple):
    """A comparison as the page shows it (in the order of the event's outputs)."""

    summary: str
    plot: object
    memory: str


class PrecisionHandlers:
    def __init__(self, manager: ModelManager, cache: ModelCache | None, exports: ExportFolder,
                 gpu: Callable = lambda fn, duration=None: fn):
        self.manager, self.cache, self.exports = manager, cache, exports
        # both forward passes in one GPU call on ZeroGPU (AppContext.gpu), here elsewhere
        self._compute = gpu(compare_precisions)

    def compare_data(self, text, progress=None) -> tuple[dict, list[str]]:
        """(the comparison's data, the precisions loaded for it) on the visitor's checkpoint."""
        text = check_text("text", text)
        with self.manager.use(current_session()) as mine:
            reference, other = compared_precisions(self.manager.device)
            pool = {(m.name, m.precision) for m in self.manager.loaded()}
            loaded_now = [p for p in (reference, other) if (mine.name, p) not in pool]
            report = (lambda frac, msg: progress(frac, desc=msg)) if progress else None
            with self.manager.hold(mine.name, reference, report, visitor=True) as ref, \
                    self.manager.hold(mine.name, other, report, visitor=True) as oth:
                cmp = comparison_of(ref, oth, text, self.cache, compute=self._compute)
        return cmp.as_dict(), loaded_now

    @user_errors
    def compare(self, text, progress=gr.Progress()) -> Compared:
        """The comparison as the page shows it."""
        data, loaded_now = self.compare_data(text, progress)
        summary = f"**{html.escape(summary_line(data))}**"
        if data.get("notice"):
            summary += f"\n\n⚠️ {html.escape(data['notice'])}"
        return Compared(summary=summary, plot=plots.figure(data), memory=memory_line(data, loaded_now))

    @user_errors
    def export(self, text) -> list[str]:
        data, _ = self.compare_data(text)  # from the cache: no forward pass
        return self.exports.write(f"precision_{data['other_precision']}_vs_{data['reference_precision']}",
                                  {"csv": plots.csv_text(data), "json": json.dumps(data, ensure_ascii=False)})

    @user_errors
    def api_compare(self, text: str) -> dict:
        """Compare the checkpoint in 8-bit with full precision on `text`, position by position: KL divergence in
        bits (kl_bits), whether the top-1 agrees (agree), top-10 overlap, per-layer attention differences, and
        the summary (n_disagree, mean_kl_bits, memory of both). Loads the second precision if needed."""
        data, _ = self.compare_data(text)
        return {**data, "summary": summary_line(data)}


class PrecisionLayout(NamedTuple):
    text: gr.Textbox
    compare: gr.Button
    summary: gr.Markdown
    plot: gr.Plot
    memory: gr.Markdown
    export: gr.Button
    files: gr.File


def layout(reference: str, other: str) -> PrecisionLayout:
    gr.Markdown(INTRO + f" On this server: **{other}** vs **{reference}**.", elem_classes="tab-intro")
    # the controls above the figure; beside it in projector mode (demo.ui.page.PROJECTOR_CSS)
    with gr.Row(elem_classes="stack-unless-projector"):
        with gr.Column(elem_classes="controls-col"):
            with gr.Row(equal_height=True):
                text = gr.Textbox(label="Text to compare", value=DEFAULT_TEXT, lines=3, max_lines=12, scale=5,
                                  elem_id="precision-text")
                compare = gr.Button("Compare 8-bit with full precision", variant="primary", scale=1, min_width=160)
            summary = gr.Markdown("Press **Compare**: the first time, the second precision is loaded (a few "
                                  "seconds).", elem_id="precision-summary")
        with gr.Column(elem_classes="figure-col"), gr.Row(elem_classes="figure-row"):
            with gr.Column(scale=3, min_width=480):
                plot = gr.Plot(plots.empty_figure("Press “Compare”"), show_label=False, elem_id="precision-plot")
            with gr.Column(scale=1, min_width=240, elem_classes="note-col"):
                gr.Markdown(NOTE)
                memory = gr.Markdown("", elem_id="precision-memory")
    export, files = export_controls("Save the numbers", "**Picture:** the camera icon on the plot downloads a "
                                    "PNG. **Numbers:** position by position (CSV) and everything (JSON).")
    return PrecisionLayout(text, compare, summary, plot, memory, export, files)


def wire(ui: PrecisionLayout, h: PrecisionHandlers, ctx: AppContext) -> None:
    compare = dict(fn=h.compare, inputs=[ui.text], outputs=[getattr(ui, f) for f in Compared._fields],
                   show_progress_on=[ui.plot], **PRIVATE, **ctx.model_queue)
    ui.compare.click(**compare)
    ui.text.submit(**compare)
    ui.export.click(h.export, [ui.text], ui.files, **PRIVATE, **ctx.model_queue)
    gr.api(h.api_compare, api_name="compare_precision", **ctx.model_queue)


def build(tab: gr.Tab, ctx: AppContext) -> None:
    """The 8-bit vs full tab, built inside ``tab``."""
    wire(layout(*compared_precisions(ctx.manager.device)),
         PrecisionHandlers(ctx.manager, ctx.cache, ctx.exports, ctx.gpu), ctx)
