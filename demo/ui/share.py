"""A link that restores the lesson: the "Copy link" button writes what the page shows into a URL (its
fragment: see :mod:`demo.core.links`), the QR code button draws that link and the page's address for a
class to scan (:mod:`demo.plots.qr`), and a page opened from such a link is set from it — the model,
prompt, sampling settings, seed, tab, the analysed text and the attention view — then draws that tab.
Every value is checked on the server; a bad link opens the page with a notice."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

import gradio as gr

from demo.core.errors import ExplorerError
from demo.core.links import ATTENTION, GENERATION, TABS, link_request, make_link, read_link, reproducing
from demo.core.settings import PRECISIONS
from demo.plots.qr import qr_codes_html
from demo.runtime.pool import ModelManager
from demo.ui.common import PRIVATE, current_session, user_errors
from demo.ui.tabs.attention import AttentionTab, view_controls
from demo.ui.tabs.generate import GenerateTab
from demo.ui.tabs.next_token import NextTokenTab

TAB_NAMES = {"generate": "Generate", "samples": "Samples", "attention": "Attention", "next_token": "Next token",
             "precision": "8-bit vs full", "about": "About"}
# The page reads its own fragment and hands it to the server; the button's result becomes the full
# URL, goes to the clipboard (where the browser allows) and into the address bar.
READ_FRAGMENT_JS = "(fragment) => window.location.hash.slice(1)"
SHOW_LINK_JS = """(fragment) => {
  if (!fragment) return fragment;
  const url = window.location.origin + window.location.pathname + '#' + fragment;
  try { history.replaceState(null, '', '#' + fragment); } catch (e) {}
  if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
  return url;
}"""


def plain(text: str) -> str:
    """A message quoting what a link held, shown as plain text in Markdown: escaped as HTML, and every
    Markdown mark backslashed (a link's key like '[Sign in](https://…)' must not become a link). ':' and
    '@' too: the renderer turns a bare 'https://1249763399/…' or 'name@host' into a link by itself."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>:@])", r"\\\1", html.escape(text, quote=False))


def describe(link: Mapping | None) -> str:
    """What a link restored, and what it had to leave out, for the notice above the tabs."""
    if not link:
        return ""
    lines = []
    if link.get("tab"):
        where = TAB_NAMES.get(link["tab"], "Generate")
        seed = link.get("seed")
        if link.get("output"):
            again = (f"the same model, settings and seed ({seed}) make it again: press **Generate** to watch it "
                     "being written" if seed is not None else "its seed was random, so **Generate** writes a new one")
            lines.append(f"**Opened from a shared link** on the *{where}* tab. The generated text is the one the "
                         f"link was made from; {again}.")
        elif seed is not None:
            lines.append(f"**Opened from a shared link** on the *{where}* tab. The same model, settings and seed "
                         f"({seed}) give the same text: press **Generate** to see it.")
        else:
            lines.append(f"**Opened from a shared link** on the *{where}* tab. Its seed is random (-1), so "
                         "**Generate** gives a new text each time; set a seed for a text everyone can repeat.")
    problems = link.get("problems") or []
    if problems:
        shown = "; ".join(plain(p) for p in problems[:6])
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        lines.append(f"⚠️ **Part of this link could not be used**, so the page keeps its defaults there: {shown}{more}.")
    return "\n\n".join(lines)


def notice_of(link: Mapping | None):
    text = describe(link)
    return gr.Markdown(text, visible=bool(text))


class LinkTargets(NamedTuple):
    """What restoring a link may set: the page's components, by what they hold."""

    prompt: gr.Textbox
    output: gr.Textbox  # the Generate tab's generated text
    generation: dict  # name in GENERATION -> the Generate tab's input
    tab: gr.State  # the tab the page shows (for the next link)
    attention_text: gr.Textbox
    attention: dict  # 'view' and the ViewControls fields -> the Attention tab's controls
    next_token_text: gr.Textbox
    notice: gr.Markdown
    link: gr.State  # the link's request, for the steps that follow (see :func:`connect`)

    def components(self) -> list:
        return [self.prompt, self.output, *self.generation.values(), self.tab, self.attention_text,
                *self.attention.values(), self.next_token_text, self.notice, self.link]


class ShareHandlers:
    def __init__(self, manager: ModelManager, targets: LinkTargets | None = None,
                 status: Callable[[], str] | None = None):
        self.manager, self.targets, self.status = manager, targets, status

    def restore(self, fragment) -> dict:
        """The link's first step (see :func:`connect`), from the page's fragment: quick, no model runs or
        loads here. Sets what the link names, as {component: value}; its request (a dict) drives the next
        steps."""
        t = self.targets
        assert t is not None, "ShareHandlers.restore needs the page's LinkTargets"
        state = read_link(fragment, self.manager.names, list(PRECISIONS))
        tab = state.tab or ("generate" if not state.empty else None)
        link = link_request(state, tab)
        out: dict = {t.notice: notice_of(link), t.link: link}
        if state.prompt is not None:
            out[t.prompt] = state.prompt
        if state.output is not None:
            out[t.output] = state.output
        out.update({t.generation[name]: value for name, value in state.settings.items() if name in t.generation})
        if tab:
            out[t.tab] = tab
        if tab == "attention":
            a = state.attention
            view = a.get("view", "head")
            # the choices that need no analysis are set here, the rest by the drawing
            controls = view_controls(view)._replace(
                aggregate=gr.Dropdown(visible=view == "aggregate", value=a.get("aggregate", "mean-heads")),
                scope=gr.Radio(visible=view == "token", value=a.get("scope", "layer")))
            out.update({t.attention[name]: update for name, update in controls._asdict().items()})
            out[t.attention["view"]] = view
            if state.text:
                out[t.attention_text] = state.text
        if tab == "next_token" and state.text:
            out[t.next_token_text] = state.text
        return out

    def load_linked_model(self, link, progress=gr.Progress()):
        """(model menu, precision menu, notice, link, model status): the model a link names, loaded for this
        visitor (the operator's limit applies); a failure joins the notice and the page keeps its model. The
        status is written here, in the same one-at-a-time step as the load, and only when a model was loaded."""
        if not isinstance(link, dict) or not (link.get("model") or link.get("precision")):
            return gr.skip()  # every output as it is
        session = current_session()
        current = self.manager.require(session) if self.manager.current else None
        name = link.get("model") or (current.name if current else None)
        precision = link.get("precision") or (current.precision if current else "auto")
        if not name:
            return gr.skip()  # every output as it is
        try:
            progress(0.0, desc=f"Loading {name} for this link…")
            loaded = self.manager.load(name, precision, session=session, visitor=True,
                                       progress=lambda frac, msg: progress(frac, desc=msg))
        except ExplorerError as exc:
            link = {**link, "problems": [*link.get("problems", []), str(exc)]}
            return gr.skip(), gr.skip(), notice_of(link), link, gr.skip()
        return loaded.name, loaded.precision, gr.skip(), gr.skip(), self.status() if self.status else gr.skip()

    @staticmethod
    def open_tab(link):
        """The link's tab, opened last: its view is drawn already, so the tab's first-visit drawing
        finds it there and leaves it."""
        return gr.Tabs(selected=link["tab"]) if isinstance(link, dict) and link.get("tab") else gr.skip()

    @user_errors
    def link(self, tab, prompt, record, *values) -> str:
        """The fragment of a link to what this page shows (its values pass the page's own checks). After
        a generation from this prompt, the link carries the settings and seed that made it, and on the
        Generate tab the text itself."""
        loaded = self.manager.require(current_session())
        n_gen = len(GENERATION)
        settings = dict(zip(GENERATION, values[:n_gen]))
        attention_text, *attention, next_text = values[n_gen:]
        tab = tab if tab in TABS else "generate"
        text = attention_text if tab == "attention" else next_text if tab == "next_token" else None
        view = dict(zip(ATTENTION, attention)) if tab == "attention" else None
        output = None
        made = reproducing(record, loaded.name, loaded.precision, prompt or "")
        if made:
            settings.update(made[0])
            output = made[1] if tab == "generate" else None
        fragment, shortened = make_link(loaded.name, loaded.precision, tab, prompt or "", settings, text, view,
                                        output)
        if shortened:
            gr.Info("The link is too short for all of it: it keeps " + " and ".join(shortened) + ".")
        return fragment


class ShareRow(NamedTuple):
    button: gr.Button
    qr_button: gr.Button
    link: gr.Textbox
    qr_box: gr.Accordion
    qr: gr.HTML
    notice: gr.Markdown
    projector: gr.Checkbox  # projector mode (see demo.ui.page.PROJECTOR_CSS)


def share_row() -> ShareRow:
    """The Copy link and QR code buttons, where the link and its QR codes appear, and the notice of a page
    opened from a link."""
    with gr.Row(equal_height=True, elem_id="share-row"):
        button = gr.Button("Copy a link to this view", size="sm", scale=1, min_width=200)
        qr_button = gr.Button("QR code for the class", size="sm", scale=1, min_width=160)
        link = gr.Textbox(show_label=False, placeholder="A link to what this page shows: a teacher's slide, a "
                          "student's question…", interactive=False, buttons=["copy"], scale=4, elem_id="share-link",
                          max_lines=1)
        projector = gr.Checkbox(False, label="Projector mode", info="larger text, the figures first, settings hidden",
                                scale=1, min_width=170, elem_id="projector-toggle")
    with gr.Accordion("QR codes: point a phone's camera at them", open=True, visible=False) as qr_box:
        qr = gr.HTML("", elem_id="share-qr")
    return ShareRow(button, qr_button, link, qr_box, qr, gr.Markdown("", visible=False, elem_id="link-notice"),
                    projector)


@user_errors
def qr_codes(url):
    """(the QR codes, their box shown): the link the page shows, and the page's own address."""
    return qr_codes_html(url), gr.Accordion(visible=True, open=True)


def connect(demo: gr.Blocks, row: ShareRow, manager: ModelManager, tabs: gr.Tabs, tab_ids: dict[str, gr.Tab],
            model_dd, precision_dd, model_status, gen: GenerateTab, att: AttentionTab, nxt: NextTokenTab,
            status_fn) -> None:
    """Copying a link, and restoring a page from its link (inside ``demo``, after its tabs are built)."""
    current_tab = gr.State("generate")
    restored = gr.State(None)
    fragment = gr.Textbox(visible=False)
    for tab_id, tab in tab_ids.items():
        tab.select(lambda t=tab_id: t, None, current_tab, queue=False, **PRIVATE)
    targets = LinkTargets(prompt=gen.prompt, output=gen.output, generation={n: gen.controls[n] for n in GENERATION},
                          tab=current_tab, attention_text=att.text, attention=att.controls, next_token_text=nxt.text,
                          notice=row.notice, link=restored)
    h = ShareHandlers(manager, targets, status_fn)
    outputs = targets.components()
    # Read the link (quick), load its model (in the one-at-a-time "load" group, only if it names one),
    # draw the tab it names, and open that tab last.
    demo.load(h.restore, [fragment], outputs, js=READ_FRAGMENT_JS, queue=False, **PRIVATE).then(
        h.load_linked_model, [restored], [model_dd, precision_dd, row.notice, restored, model_status],
        show_progress_on=[model_status], concurrency_id="load", concurrency_limit=1, **PRIVATE).then(
        **att.restore(restored)).then(**nxt.restore(restored)).then(h.open_tab, [restored], tabs, **PRIVATE)
    link_inputs = [current_tab, gen.prompt, gen.last_generation, *targets.generation.values(), att.text,
                   *[att.controls[n] for n in ATTENTION], nxt.text]
    row.button.click(h.link, link_inputs, row.link, **PRIVATE).success(None, row.link, row.link, js=SHOW_LINK_JS,
                                                                       **PRIVATE)
    # the QR codes: the same link, then its codes drawn on the server from the address the browser shows
    row.qr_button.click(h.link, link_inputs, row.link, **PRIVATE).success(
        None, row.link, row.link, js=SHOW_LINK_JS, **PRIVATE).success(qr_codes, row.link, [row.qr, row.qr_box],
                                                                      **PRIVATE)

