"""The page shell: the header with the model picker, and the tabs, each built by its own module
and connected here (the links from the Generate tab to the analysis tabs)."""

from __future__ import annotations

import html

import gradio as gr

from demo.core.errors import ExplorerError, ValidationError
from demo.core.exports import EXPORT_KEEP_S
from demo.core.sampling import MAX_NEW_TOKENS
from demo.core.settings import PRECISIONS
from demo.core.validation import check_text
from demo.runtime.pool import ModelManager
from demo.ui import share
from demo.ui.common import PRIVATE, AppContext, current_session, is_sessionless, user_errors
from demo.ui.inputs import ChoiceDropdown, short_choice_errors
from demo.ui.tabs import about as about_tab
from demo.ui.tabs import attention as attention_tab
from demo.ui.tabs import generate as generate_tab
from demo.ui.tabs import next_token as next_token_tab
from demo.ui.tabs import precision as precision_tab
from demo.ui.tabs import samples as samples_tab

TITLE = "GPT Explorer"
# Projector mode (a class on the page's body, set by the "Projector mode" box: no server round trip):
# larger text, no header or introductions, the sampling settings hidden and the notes under the
# figures, so that each tab's main figure is on screen at 1280x800 and 1920x1080.
PROJECTOR_CSS = """
body.projector {
  --text-sm: 16px; --text-md: 19px; --text-lg: 21px; --text-xl: 24px;
  --body-text-size: 19px; --prose-text-size: 19px; --input-text-size: 19px; --block-label-text-size: 16px;
  --block-title-text-size: 16px; --block-info-text-size: 15px; --checkbox-label-text-size: 17px;
  --section-header-text-size: 17px; --button-large-text-size: 19px; --button-medium-text-size: 17px;
  --button-small-text-size: 16px;
}
body.projector .gradio-container { max-width: 100% !important; padding-top: 4px !important; }
body.projector #page-head, body.projector #model-row, body.projector .model-status, body.projector .tab-intro,
body.projector #generate-examples, body.projector #attention-examples, body.projector .settings-col,
body.projector #link-notice, body.projector #to-analysis, body.projector .info-text, body.projector .stats,
body.projector #samples .prompt { display: none !important; }
body.projector .figure-row { flex-wrap: wrap !important; }
body.projector .figure-row > .note-col { flex: 1 1 100% !important; min-width: 100% !important; }
body.projector .stack-unless-projector { flex-direction: row !important; flex-wrap: nowrap !important; }
body.projector .stack-unless-projector > .controls-col { flex: 0 0 min(380px, 30%) !important; min-width: 0 !important;
}
body.projector .stack-unless-projector > .figure-col { flex: 1 1 0 !important; min-width: 0 !important; }
body.projector #projector-toggle .info, body.projector #projector-toggle [data-testid="block-info"] { display: none; }
body.projector #share-row { --button-small-text-size: 14px; --input-text-size: 15px; --checkbox-label-text-size: 15px; }
body.projector #share-row button { white-space: nowrap; }
body.projector #output textarea { max-height: 10vh; }
body.projector #prompt textarea, body.projector #samples-prompt textarea { max-height: 8vh; }
body.projector .tokview { font-size: 1.2rem; line-height: 1.6; }
"""
# the figures follow their new widths (plotly redraws on a window resize)
PROJECTOR_JS = ("(on) => { document.body.classList.toggle('projector', !!on); "
                "window.dispatchEvent(new Event('resize')); return []; }")
CACHE_CLEAN_EVERY_S = 300
CSS = """
.stats { font-size: 0.9em; opacity: 0.85; }
.model-status { font-size: 0.95em; }
footer { display: none !important; }
.qr-codes { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
.qr-codes figure { margin: 0; max-width: min(320px, 45vh); }
.qr-codes svg { display: block; width: min(320px, 45vh); height: auto; }
.qr-codes figcaption { margin-top: 0.4rem; }
.qr-address { font-size: 0.8em; word-break: break-all; opacity: 0.8; }
/* controls above the figure (beside it in projector mode). Every rule that the two modes set differently
   starts at body: Gradio also adds each rule prefixed with its container's classes, and a prefixed normal
   rule would outrank the projector one; a rule that starts at body has no prefixed copy that matches. */
body:not(.projector) .stack-unless-projector { flex-direction: column !important; }
body:not(.projector) .stack-unless-projector > .controls-col,
body:not(.projector) .stack-unless-projector > .figure-col { width: 100% !important; }
""" + PROJECTOR_CSS


def format_model_status(manager: ModelManager, session: str | None = None) -> str:
    """This visitor's model (device, precision, memory), and what else the server holds."""
    try:
        cur = manager.require(session)
    except ExplorerError as exc:
        return f"⚠️ **No model.** {html.escape(str(exc))}"
    i = cur.info()
    status = (f"**{html.escape(i['name'])}** · {i['device']} · {i['precision']} ({i['precision_label']}) · "
              f"{i['memory_mb']:,} MB in memory · {i['parameters'] / 1e6:,.1f} M parameters · "
              f"context {i['context_length']} tokens")
    others = [m for m in manager.loaded() if m is not cur]
    if others:
        listed = ", ".join(f"{html.escape(m.name)} ({m.precision})" for m in others)
        status += (f"  \nAlso in the server's memory (other visitors' models, or the other precision of a "
                   f"comparison): {listed}. Your choice changes only your page.")
    if manager.notice and (cur.name, cur.precision) == manager.default:
        status += f"\n\nℹ️ {html.escape(manager.notice)}"
    if manager.warning:
        status += f"\n\n⚠️ {html.escape(manager.warning)}"
    return status


class ModelHandlers:
    def __init__(self, manager: ModelManager):
        self.manager = manager

    @user_errors
    def load_model(self, name, precision, progress=gr.Progress()):
        """Load a catalogue model for this visitor (their session; other visitors keep theirs). On
        failure the visitor's previous model stays and the error is shown."""
        session = current_session()
        try:
            if is_sessionless(session):
                raise ValidationError("a request without a session cannot choose a model (the choice would be "
                                      "forgotten at once): use gradio_client, which keeps a session, or the page")
            progress(0.0, desc=f"Loading {name}…")
            self.manager.load(name, precision, progress=lambda frac, msg: progress(frac, desc=msg), session=session,
                              visitor=True)
        except ExplorerError as exc:
            gr.Warning(str(exc))
            return format_model_status(self.manager, session) + f"\n\n❌ {html.escape(str(exc))}"
        return format_model_status(self.manager, session)

    def status(self) -> str:
        return format_model_status(self.manager, current_session())

    def menu(self):
        """(model menu, precision menu): the models this visitor can switch to, the others marked, both
        showing the model that serves this visitor (after a refused load too)."""
        try:
            cur = self.manager.require(current_session())
        except ExplorerError:
            return gr.skip(), gr.skip()
        return gr.Dropdown(choices=model_choices(self.manager), value=cur.name), cur.precision

    def length_limit(self, max_new_tokens):
        """Max new tokens, ranged to the model this visitor uses: the prompt and the new tokens share its
        context window, and the prompt needs at least one token."""
        try:
            ctx = self.manager.require(current_session()).context_length
        except ExplorerError:
            return gr.skip()
        top = max_new_tokens_limit(ctx)
        # the range only: the value is left to the page (a link restored meanwhile may have set it, and the
        # value read here can be older), unless it no longer fits
        if isinstance(max_new_tokens, (int, float)) and max_new_tokens > top:
            return gr.Slider(maximum=top, value=top)
        return gr.Slider(maximum=top)

    def forget(self) -> None:
        """The visitor closed the page: forget their choice."""
        self.manager.forget(current_session())


UNAVAILABLE = "not available to visitors here"


def model_choices(manager: ModelManager) -> list[tuple[str, str]]:
    """The model menu: every catalogue model, those a visitor cannot switch to marked as such."""
    return [(name if manager.visitor_may_choose(name) else f"{name} ({UNAVAILABLE})", name) for name in manager.names]


def max_new_tokens_limit(context_length: int) -> int:
    """The top of the Max new tokens slider for a model with this context window."""
    slider_top = MAX_NEW_TOKENS.slider[1] if MAX_NEW_TOKENS.slider else MAX_NEW_TOKENS.hi
    return int(max(1, min(slider_top, context_length - 1)))


@user_errors
def _join(prompt, output) -> str:
    """The prompt and its generated text, for an analysis tab (checked: any client can send this event)."""
    if not isinstance(prompt, str) or not isinstance(output, str):
        raise ValidationError("the prompt and the generated text must be text")
    return check_text("the prompt and its generated text", prompt + output)


def _opener(tab_id: str):
    def open_tab():
        return gr.Tabs(selected=tab_id)
    return open_tab


def build_app(ctx: AppContext) -> gr.Blocks:
    manager = ctx.manager
    models = ModelHandlers(manager)
    # Exports are served from their own capped folder (a static path: Gradio serves them in place instead of
    # copying them into its cache); anything else Gradio caches is deleted after the exports' lifetime.
    gr.set_static_paths([ctx.exports.root])
    with gr.Blocks(title=TITLE, delete_cache=(CACHE_CLEAN_EVERY_S, EXPORT_KEEP_S)) as demo:
        gr.Markdown(f"# {TITLE}\nTry a GPT language model and see inside it: generate text, watch where each "
                    "attention head looks, and see the probability of every possible next token.", elem_id="page-head")
        with gr.Row(equal_height=True, elem_id="model-row"):
            model_dd = ChoiceDropdown(model_choices(manager), value=manager.current.name if manager.current else None,
                                      label="Model", scale=2)
            precision_dd = ChoiceDropdown(list(PRECISIONS),
                                          value=manager.current.precision if manager.current else "auto",
                                          label="Precision", scale=1, info="auto = 8-bit on GPU, fp32 on CPU")
            load_btn = gr.Button("Load model", scale=1)
        model_status = gr.Markdown(models.status(), elem_classes="model-status")
        link_row = share.share_row()

        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate") as tab:
                gen = generate_tab.build(tab, ctx)
            with gr.Tab("Samples", id="samples") as tab:
                smp = samples_tab.build(tab, ctx)
            with gr.Tab("Attention", id="attention") as tab:
                att = attention_tab.build(tab, ctx)
            with gr.Tab("Next token", id="next_token") as tab:
                nxt = next_token_tab.build(tab, ctx, gen.controls)
            with gr.Tab("8-bit vs full", id="precision") as tab:
                precision_tab.build(tab, ctx)
            with gr.Tab("About", id="about") as tab:
                about_tab.build(tab)
        link_row.projector.change(None, link_row.projector, None, js=PROJECTOR_JS, **PRIVATE)
        tab_ids = {str(t.id): t for t in tabs.children if isinstance(t, gr.Tab)}
        share.connect(demo, link_row, manager, tabs, tab_ids, model_dd, precision_dd, model_status, gen, att, nxt,
                      models.status)

        load_btn.click(models.load_model, [model_dd, precision_dd], model_status, api_name="load_model",
                       concurrency_limit=1, concurrency_id="load").then(
            models.menu, None, [model_dd, precision_dd], **PRIVATE)  # the menu shows what serves, refusal or not
        # The Generate tab's links: its prompt and output go to an analysis tab, which opens and analyses them.
        for button, target, tab_id in ((gen.to_attention, att, "attention"), (gen.to_next_token, nxt, "next_token")):
            button.click(_join, [gen.prompt, gen.output], target.text, **PRIVATE).then(
                _opener(tab_id), None, tabs, **PRIVATE).then(**target.on_text)
        # A generated token's step, opened in an analysis tab (its forward passes are in the cache already).
        step = [gen.last_generation, gen.position]
        for button, target, tab_id in ((gen.step_to_attention, att, "attention"),
                                       (gen.step_to_next_token, nxt, "next_token")):
            # the step first, then the tab: its first-visit drawing then finds the step there and keeps it
            button.click(**target.open_step(step)).success(_opener(tab_id), None, tabs, **PRIVATE)
        # A sample re-run alone: its prompt, length, settings and seed in the Generate tab, which then
        # generates it (Stop stops it there).
        rerun_targets = {"prompt": gen.prompt, **gen.controls}
        smp.view.rerun(smp.handlers.rerun_event(rerun_targets), [smp.data], list(rerun_targets.values()),
                       **PRIVATE).success(_opener("generate"), None, tabs, **PRIVATE).then(**gen.run).then(
            **gen.after_run)
        # The page's first status runs in the "load" group (one at a time, first come first served), so a Load
        # model clicked right after the page opened runs after it and its message is not overwritten. The length
        # slider follows the context window of the visitor's model: when the page opens, and whenever their
        # model changes (the menu, a link: both rewrite the status).
        max_new = gen.controls["max_new_tokens"]
        demo.load(models.status, None, model_status, concurrency_id="load", concurrency_limit=1, **PRIVATE).then(
            models.length_limit, max_new, max_new, **PRIVATE)
        model_status.change(models.length_limit, max_new, max_new, **PRIVATE)
        demo.unload(models.forget)
    short_choice_errors(demo)
    return demo
