"""The Next-token tab: probability bars before and after the sampling settings, buttons that
append one token at a time, token look-up, the logit lens, and the /next_token and /logit_lens API.

Handlers validate every input, call :mod:`demo.analysis.next_token` and format with
:mod:`demo.plots.next_token`. The tab has its own set of the sampling sliders, next to the bars, so
a student sees the values that shape them; "Explore the next token →" on the Generate tab copies the
Generate tab's settings in, and two buttons copy them either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypedDict

import gradio as gr

from demo.analysis import next_token as nt
from demo.analysis import token_step as steps
from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.sampling import NAMES, SETTING, SamplingParams, validate_sampling
from demo.core.tokens import display_token
from demo.core.validation import check_choice, check_index, check_number, check_text, encode_text
from demo.plots import next_token as plots
from demo.plots.next_token import choice_label, code_label, format_lookup, format_note, format_summary, table_rows
from demo.runtime.loading import LoadedModel
from demo.runtime.pool import ModelManager
from demo.ui.common import PRIVATE, AppContext, current_session, unchanged, user_errors, with_parameters
from demo.ui.inputs import PRESET_TARGETS, NumberSlider, preset_radio, preset_values, sampling_inputs

DEFAULT_TEXT = "It was a dark and stormy night, and"
MAX_BARS = 50
MAX_HISTORY = 200  # undo steps a session keeps, the latest ones
MAX_HISTORY_CHARS = 100_000  # and the characters of their texts, in all (a session's state stays small)

INTRO = """Each time a GPT writes a token, it gives **every token of its vocabulary** a probability of coming next.
The light bars are the model's own probabilities; the dark bars are what is left after the sampling
settings (temperature, top-k, top-p, min-p, penalties): the sampler draws the next token from the dark
bars. Struck-through, grey tokens have been filtered out and can no longer be drawn. Drive the model
yourself with the buttons: add the most likely token, a sampled one, or any token you pick."""

LENS_NOTE = """**Logit lens.** A GPT passes each token through a stack of layers that keep adding to a
running vector (the *residual stream*). Here that vector is read **after every layer** with the model's
final layer norm and output matrix, as if the model stopped there. Bottom row: only the token
embeddings; top row: the model's real prediction. Each cell is the most likely next token at that depth,
darker = more confident; hover for the runners-up. Watch where the final answer first appears."""

LOCAL_LABELS = {"do_sample": "Sample (off = greedy)", "seed": "Seed for sampled tokens"}  # unlike the Generate tab's
# /next_token's parameters: the text, the sampling settings but the seed (no draw happens), the bars.
API_SETTINGS = [n for n in NAMES if n != "seed"]


def _settings(values: list) -> SamplingParams:
    """Sampling settings from the tab's inputs, in :data:`demo.core.sampling.NAMES` order."""
    return validate_sampling(**dict(zip(NAMES, values)))


def _top_n(value) -> int:
    return check_number("number of bars", value, 1, nt.MAX_TOP_N, integer=True)


class UndoEntry(TypedDict):
    text: str  # the text before a token was appended
    n: int  # how many tokens it had (its ids are a prefix of the current ones)


class NextTokenState(TypedDict):
    """What the tab keeps per visitor (a gr.State): the text shown, its exact token ids (a button appends
    exactly one token even where the text would re-tokenize differently) and the undo history."""

    model: str
    text: str
    ids: list[int]
    history: list[UndoEntry]


class NextTokenView(NamedTuple):
    """Everything a next-token event may change, in the order of its outputs."""

    text: object
    state: object
    plot: object
    summary: object
    note: object
    table: object
    choose: object
    lookup: object
    appended: object  # what the last button appended (or a note)


# ----------------------------------------------------------------------------- handlers


def appended_text(loaded: LoadedModel, text: str, ids: list[int], token_id: int) -> str:
    """The text after appending one token to ``ids`` (which spell ``text``). Decoding the whole
    sequence joins a character split over several byte tokens; a text that does not decode back
    exactly (a tokenizer that normalises) keeps its own spelling and gets the new piece added."""
    base, full = loaded.decode(ids), loaded.decode(list(ids) + [int(token_id)])
    if base == text:
        return full
    if full.startswith(base):
        return text + full[len(base):]
    return text + loaded.decode([int(token_id)])


def _latest(history: list[UndoEntry]) -> list[UndoEntry]:
    """The latest undo steps, within MAX_HISTORY steps and MAX_HISTORY_CHARS characters of text."""
    kept, chars = [], 0
    for step in reversed(history[-MAX_HISTORY:]):
        chars += len(step["text"])
        if chars > MAX_HISTORY_CHARS:
            break
        kept.append(step)
    return kept[::-1]


class NextTokenHandlers:
    """The tab's server functions. ``state`` is a per-session dict: the text shown, its token ids
    (kept so a button appends exactly one token even when the text would re-tokenize differently) and
    the undo history."""

    def __init__(self, manager: ModelManager, cache: ModelCache | None = None, gpu: Callable = lambda fn, **kw: fn):
        self.manager = manager
        self.cache = cache
        # The forward passes, where the model runs (a ZeroGPU worker on such hardware; else here): they
        # take and return plain data, and the cache and everything else stay in this process.
        self._logits = gpu(self._forward_logits)
        self._lens = gpu(self._logit_lens)

    @staticmethod
    def _forward_logits(loaded: LoadedModel, window: list[int]):
        return nt.forward_last_logits(loaded, window)

    @staticmethod
    def _logit_lens(loaded: LoadedModel, ids: list[int], positions: int) -> nt.LensResult:
        return nt.logit_lens(loaded, ids, positions)

    def _forward(self, loaded: LoadedModel, window: list[int]):
        return self._logits(loaded, list(window))

    # -- helpers

    @staticmethod
    def _ids(loaded: LoadedModel, text: str, state) -> list[int]:
        if isinstance(state, dict) and state.get("model") == loaded.name and state.get("text") == text:
            return list(state["ids"])
        return list(encode_text(loaded.tokenizer, text).ids)

    @staticmethod
    def _state(loaded: LoadedModel, text, ids, state, history=None) -> NextTokenState:
        if history is None:
            history = list(state.get("history", [])) if isinstance(state, dict) else []
        return {"model": loaded.name, "text": text, "ids": list(ids), "history": _latest(history)}

    def analyse(self, text, state, top_n, settings: list, query="") -> tuple[dict, NextTokenState, list[dict]]:
        """(view data, new state, look-up results) for a text and settings."""
        loaded = self.manager.require(current_session())
        text = check_text("text", text)
        params = _settings(settings)
        n = _top_n(top_n)
        ids = self._ids(loaded, text, state)
        dist = nt.distribution(loaded, ids, params, self.cache, self._forward)
        data = dist.as_dict(loaded, n)
        data["repeated_tokens"] = len(set(dist.window_ids))
        found = []
        if isinstance(query, str) and query.strip("\n"):
            found = nt.lookup(loaded, dist, check_text("the token to look up", query, 200, allow_blank=True))
        return data, self._state(loaded, text, ids, state), found

    def view(self, data: dict, found: list[dict]) -> dict:
        """The plot, summary, note, table, choose list and look-up of a distribution."""
        loaded = self.manager.require(current_session())
        choices = [(f"look-up: {r['query_label']} → first token {r['token']}   {plots.fmt_prob(r['raw_prob'])} → "
                    f"{plots.fmt_prob(r['prob'])}{'' if r['kept'] else '  (filtered)'}", r["id"]) for r in found]
        choices += [(choice_label(r), r["id"]) for r in data["rows"]]
        value = max(found, key=lambda r: r["raw_prob"])["id"] if found else None
        return dict(plot=plots.bars_figure(data), summary=format_summary(data, loaded.context_length),
                    note=format_note(data, data["repeated_tokens"]), table=table_rows(data),
                    choose=gr.Dropdown(choices=choices, value=value), lookup=format_lookup(found))

    # -- events

    @user_errors
    def refresh(self, text, state, top_n, query, *settings) -> NextTokenView:
        data, state, found = self.analyse(text, state, top_n, list(settings), query)
        return NextTokenView(text=gr.skip(), state=state, appended=gr.skip(), **self.view(data, found))

    def first_show(self, text, state, top_n, query, *settings) -> NextTokenView:
        """When the tab is opened: draw the bars once (later visits keep what is there)."""
        if state is not None:
            return unchanged(NextTokenView)
        return self.refresh(text, state, top_n, query, *settings)

    @user_errors
    def append(self, mode: str, text, state, top_n, query, chosen, *settings) -> NextTokenView:
        loaded = self.manager.require(current_session())
        mode = check_choice("append mode", mode, list(nt.APPEND_MODES))
        text = check_text("text", text)
        params = _settings(list(settings))
        ids = self._ids(loaded, text, state)
        token_id = None
        if mode == "chosen":
            if chosen is None or chosen == "":
                raise ValidationError("choose a token from the list first (or look one up)")
            token_id = check_index("token id", chosen, loaded.vocab_size)
        s = nt.append_token(loaded, ids, params, mode, token_id, self.cache, self._forward)
        new_ids = ids + [s.token_id]
        # an undo entry is the text and how many tokens it had: its ids are a prefix of the new ones
        history = (list(state.get("history", [])) if isinstance(state, dict) else []) + [{"text": text, "n": len(ids)}]
        new_text = appended_text(loaded, text, ids, s.token_id)
        new_state = self._state(loaded, new_text, new_ids, None, history)
        label = display_token(loaded.tokenizer, s.token_id)
        how = {"most likely": "the most likely token", "chosen": "your token",
               "sampled": f"a sampled token (seed {s.seed}, position {s.position})"}[s.mode]
        msg = (f"Appended {how}: {code_label(label)} — it had {plots.fmt_prob(s.raw_prob)} for the model and "
               f"{plots.fmt_prob(s.prob)} after the settings.")
        if mode == "sampled" and s.mode == "most likely":
            msg += " (Sampling is off in the settings, so the sampler takes the most likely token.)"
        if s.prob == 0:
            msg += " The settings had filtered it out: the sampler could never have drawn it."
        data, new_state, found = self.analyse(new_text, new_state, top_n, list(settings), query)
        return NextTokenView(text=new_text, state=new_state, appended=msg, **self.view(data, found))

    def append_most_likely(self, text, state, top_n, query, chosen, *settings) -> NextTokenView:
        return self.append("most likely", text, state, top_n, query, chosen, *settings)

    def append_sampled(self, text, state, top_n, query, chosen, *settings) -> NextTokenView:
        return self.append("sampled", text, state, top_n, query, chosen, *settings)

    def append_chosen(self, text, state, top_n, query, chosen, *settings) -> NextTokenView:
        return self.append("chosen", text, state, top_n, query, chosen, *settings)

    @user_errors
    def undo(self, text, state, top_n, query, *settings) -> NextTokenView:
        if not isinstance(state, dict) or not state.get("history"):
            raise ValidationError("nothing to undo: no token has been appended yet")
        history = list(state["history"])
        prev = history.pop()
        loaded = self.manager.require(current_session())
        ids = list(state.get("ids", []))[: int(prev["n"])]
        if state.get("model") != loaded.name or loaded.decode(ids) != prev["text"]:
            ids = list(encode_text(loaded.tokenizer, prev["text"]).ids)  # the text was edited in between
        restored = {"model": loaded.name, "text": prev["text"], "ids": ids, "history": history}
        data, new_state, found = self.analyse(prev["text"], restored, top_n, list(settings), query)
        return NextTokenView(text=prev["text"], state=new_state, appended="Undone: back to the previous text.",
                             **self.view(data, found))

    @user_errors
    def lens(self, text, state, positions):
        loaded = self.manager.require(current_session())
        text = check_text("text", text)
        positions = check_number("positions", positions, 1, nt.LENS_MAX_POSITIONS, integer=True)
        ids = self._ids(loaded, text, state)
        result = self._lens(loaded, ids, positions)
        msg = LENS_NOTE
        if result.shown_from:
            msg += (f"\n\nShowing the last {len(result.positions)} of {len(result.positions) + result.shown_from} "
                    "positions (the model still read all of them).")
        if result.dropped:
            msg += f" The first {result.dropped:,} tokens did not fit the context window and were dropped."
        return plots.lens_figure(result.as_dict()), msg

    # -- API

    @user_errors
    def api_next_token(self, text, *values) -> dict:
        """The next-token distribution of `text` before and after the sampling settings: one row per token
        (token, id, raw_prob, prob after the settings, kept, rank, rank_after), entropies in bits, survivors.
        ``values``: the settings named in :data:`API_SETTINGS`, then the number of bars."""
        *settings, top_n = values
        given = dict(zip(API_SETTINGS, settings))
        data, _, _ = self.analyse(text, None, top_n, [given.get(n, SETTING[n].default) for n in NAMES])
        data.pop("repeated_tokens", None)
        return data

    @user_errors
    def api_logit_lens(self, text: str, positions: int = 16) -> dict:
        """Logit lens of `text`: for each of the last `positions` positions, the top next token (and its
        probability) read from every layer's residual stream through the final layer norm and unembedding."""
        loaded = self.manager.require(current_session())
        positions = check_number("positions", positions, 1, nt.LENS_MAX_POSITIONS, integer=True)
        ids = list(encode_text(loaded.tokenizer, check_text("text", text)).ids)
        return self._lens(loaded, ids, positions).as_dict()


def copy_settings(*values):
    """Copy sampling values between the tabs' inputs (in NAMES order, then maybe the preset).
    A seed box may hand over None for "random": shown as -1."""
    values = list(values)
    seed_at = NAMES.index("seed")
    if len(values) > seed_at and (values[seed_at] is None or values[seed_at] == ""):
        values[seed_at] = -1
    return values


def api_next_token_function(h: NextTokenHandlers) -> Callable:
    """``h.api_next_token`` with /next_token's named, typed parameters and defaults (from the definition)."""
    return with_parameters(
        h.api_next_token, ["text", *API_SETTINGS, "top_n"],
        annotations={"text": str, **{n: SETTING[n].python_type for n in API_SETTINGS}, "top_n": int, "return": dict},
        defaults={**{n: SETTING[n].default for n in API_SETTINGS}, "top_n": 20})


# ----------------------------------------------------------------------------- layout


class NextTokenLayout(NamedTuple):
    """The tab's components."""

    text: gr.Textbox
    state: gr.State  # NextTokenState
    show: gr.Button
    most_likely: gr.Button
    sampled: gr.Button
    undo: gr.Button
    choose: gr.Dropdown
    append_chosen: gr.Button
    appended: gr.Markdown
    summary: gr.Markdown
    plot: gr.Plot
    preset: gr.Radio
    settings: dict  # sampling setting name (NAMES) -> this tab's input
    from_generate: gr.Button
    to_generate: gr.Button
    top_n: gr.Slider
    query: gr.Textbox
    look_up: gr.Button
    lookup: gr.Markdown
    note: gr.Markdown
    table: gr.Dataframe
    lens_positions: gr.Slider
    lens_run: gr.Button
    lens_note: gr.Markdown
    lens_plot: gr.Plot

    @property
    def view_outputs(self) -> list:
        """The components of :class:`NextTokenView`, in its field order."""
        return [getattr(self, f) for f in NextTokenView._fields]

    @property
    def view_inputs(self) -> list:
        """What every redraw reads: the text, the state, the bars, the look-up, the settings (NAMES order)."""
        return [self.text, self.state, self.top_n, self.query, *self.settings.values()]


def layout() -> NextTokenLayout:
    """The tab's components, built in the current Gradio context."""
    gr.Markdown(INTRO, elem_classes="tab-intro")
    state = gr.State(None)
    with gr.Row():
        # the controls above the bars; beside them in projector mode (demo.ui.page.PROJECTOR_CSS)
        with gr.Column(scale=3), gr.Row(elem_classes="stack-unless-projector"):
            with gr.Column(elem_classes="controls-col"):
                text = gr.Textbox(label="Text", value=DEFAULT_TEXT, lines=3, max_lines=12,
                                  placeholder="Type a text: the bars show what could come next")
                with gr.Row():
                    show = gr.Button("Show the next token", variant="primary")
                    most_likely = gr.Button("+ Most likely")
                    sampled = gr.Button("+ Sampled")
                    undo = gr.Button("↶ Undo")
                with gr.Row(equal_height=True):
                    choose = gr.Dropdown(choices=[], value=None, label="…or choose any token from the list",
                                         scale=4, allow_custom_value=False)
                    append_chosen = gr.Button("+ Append chosen", scale=1)
                appended = gr.Markdown("")
                summary = gr.Markdown("")
            with gr.Column(elem_classes="figure-col"):
                plot = gr.Plot(plots.empty_figure("Press “Show the next token”"), show_label=False,
                               elem_id="next-token-plot")
        with gr.Column(scale=2, elem_classes="settings-col"):
            with gr.Accordion("Sampling settings (this tab)", open=True):
                preset = preset_radio()
                settings = sampling_inputs(labels=LOCAL_LABELS)
                with gr.Row():
                    from_generate = gr.Button("⇐ Copy from the Generate tab", size="sm")
                    to_generate = gr.Button("Send to the Generate tab ⇒", size="sm")
            top_n = NumberSlider(5, MAX_BARS, value=20, step=1, label="Bars to show",
                              info="The model's N most likely tokens, plus any the settings move into their top N "
                                   "(a repetition penalty can)")
            query = gr.Textbox(label="Look up a token or word", placeholder="e.g. night — ␣ = space, ↵ = newline",
                               max_lines=1)
            look_up = gr.Button("Look up", size="sm")
            lookup = gr.Markdown("")
            note = gr.Markdown("", label="What the settings did")
    with gr.Accordion("Table of the tokens in the bars", open=False):
        table = gr.Dataframe(headers=["rank", "token", "id", "model", "after settings", "kept?", "rank after"],
                             interactive=False, wrap=True)
    with gr.Accordion("Logit lens: how the prediction forms through the layers", open=False):
        with gr.Row():
            lens_positions = NumberSlider(4, nt.LENS_MAX_POSITIONS, value=16, step=1,
                                       label="Positions to show (the last ones)", scale=3)
            lens_run = gr.Button("Run the logit lens", scale=1)
        lens_note = gr.Markdown(LENS_NOTE)
        lens_plot = gr.Plot(show_label=False, elem_id="lens-plot")
    return NextTokenLayout(text=text, state=state, show=show, most_likely=most_likely, sampled=sampled, undo=undo,
                           choose=choose, append_chosen=append_chosen, appended=appended, summary=summary, plot=plot,
                           preset=preset, settings={n: settings[n] for n in NAMES}, from_generate=from_generate,
                           to_generate=to_generate, top_n=top_n, query=query, look_up=look_up, lookup=lookup,
                           note=note, table=table, lens_positions=lens_positions, lens_run=lens_run,
                           lens_note=lens_note, lens_plot=lens_plot)


# ----------------------------------------------------------------------------- events that set the page by name


class NextTokenPage:
    """The tab's events that also set its sampling inputs: a text (and settings) arriving from the
    Generate tab, a generated token's step, a link. Each returns ``{component: value}``."""

    def __init__(self, h: NextTokenHandlers, ui: NextTokenLayout, manager: ModelManager):
        self.h, self.ui, self.manager = h, ui, manager

    def _page(self, values: list, view: NextTokenView) -> dict:
        """The settings (NAMES order, then maybe the preset) and the view, by component."""
        out = dict(zip([*self.ui.settings.values(), self.ui.preset], values))
        out.update(zip(self.ui.view_outputs, view))
        return out

    def on_text(self, text, top_n, query, *gen_values) -> dict:
        """Text (and settings) arrive from the Generate tab: copy the settings, start a fresh history."""
        values = copy_settings(*gen_values)
        return self._page(values, self.h.refresh(text, None, top_n, query, *values[: len(NAMES)]))

    @user_errors
    def open_step(self, record, position, top_n, query) -> dict:
        """A generated token's step: the text the model had read when it drew it (its exact tokens), under
        the generation's own settings, with a fresh history."""
        loaded = self.manager.require(current_session())
        record, k = steps.check_step(loaded, record, position)
        ids = steps.step_context(record, k)
        text = loaded.decode(ids)
        values = copy_settings(*[(record.get("settings") or {}).get(n, SETTING[n].default) for n in NAMES])
        # the distribution it was drawn from, the drawn token among the bars (marked) even when it was not
        # among the most likely
        data = steps.step_distribution(loaded, record, k, _top_n(top_n), self.h.cache, self.h._forward)
        data["repeated_tokens"] = len(set(nt.model_window(loaded, ids)[0]))
        state = NextTokenState(model=loaded.name, text=text, ids=ids, history=[])
        view = self.h.view(data, [])
        drawn = record["tokens"][k]
        note = (f"Opened token #{k + 1} of the generation: here the model drew {code_label(drawn.get('label', ''))} "
                f"(it had {plots.fmt_prob(float(drawn.get('prob', 0.0)))} after the settings; its bar is marked "
                "“drawn”). The bars are the distribution it was drawn from; the buttons take another path from here.")
        view["choose"] = gr.Dropdown(choices=view["choose"].choices, value=drawn.get("id"))
        return self._page(values, NextTokenView(text=text, state=state, appended=note, **view))

    def restore(self, link, top_n, query, *gen_values):
        """What a link names, if it names this tab: its text under the Generate tab's settings (which the
        link has just set); otherwise nothing changes."""
        if not isinstance(link, dict) or link.get("tab") != "next_token" or not link.get("text"):
            return gr.skip()
        try:
            return self.on_text(link["text"], top_n, query, *gen_values)
        except gr.Error:
            return gr.skip()


# ----------------------------------------------------------------------------- wiring


class NextTokenTab(NamedTuple):
    text: gr.Textbox
    on_text: dict  # the event that receives a text and settings from the Generate tab
    open_step: Callable[[list], dict]  # inputs (record, position) -> the event that opens a generated token's step
    restore: Callable[[gr.State], dict]  # a link's state -> the event that draws its text, if it names this tab


def wire(tab: gr.Tab, ui: NextTokenLayout, h: NextTokenHandlers, page: NextTokenPage, ctx: AppContext,
         gen_controls: dict) -> NextTokenTab:
    """Connect the tab's events (and /next_token, /logit_lens); the handle the page shell connects."""
    common = dict(**PRIVATE, **ctx.model_queue)
    redraw = dict(fn=h.refresh, inputs=ui.view_inputs, outputs=ui.view_outputs, **common)
    for event in (ui.show.click, ui.text.submit, ui.look_up.click, ui.query.submit):
        event(**redraw)
    for name, comp in ui.settings.items():  # the seed only matters to sampled tokens
        if name != "seed":
            comp.input(trigger_mode="always_last", **redraw)
    ui.top_n.input(trigger_mode="always_last", **redraw)
    preset_targets = [ui.settings[n] for n in PRESET_TARGETS]
    ui.preset.input(preset_values, ui.preset, preset_targets, **PRIVATE).then(**redraw)

    append_inputs = [ui.text, ui.state, ui.top_n, ui.query, ui.choose, *ui.settings.values()]
    ui.most_likely.click(h.append_most_likely, append_inputs, ui.view_outputs, **common)
    ui.sampled.click(h.append_sampled, append_inputs, ui.view_outputs, **common)
    ui.append_chosen.click(h.append_chosen, append_inputs, ui.view_outputs, **common)
    ui.undo.click(h.undo, ui.view_inputs, ui.view_outputs, **common)
    ui.lens_run.click(h.lens, [ui.text, ui.state, ui.lens_positions], [ui.lens_plot, ui.lens_note], **common)

    gen_settings = [gen_controls[n] for n in NAMES] + [gen_controls["preset"]]
    with_settings = [*ui.settings.values(), ui.preset, *ui.view_outputs]
    ui.from_generate.click(copy_settings, gen_settings, [*ui.settings.values(), ui.preset], **PRIVATE).then(**redraw)
    ui.to_generate.click(copy_settings, list(ui.settings.values()), [gen_controls[n] for n in NAMES], **PRIVATE)

    gr.api(api_next_token_function(h), api_name="next_token", **ctx.model_queue)
    gr.api(h.api_logit_lens, api_name="logit_lens", **ctx.model_queue)
    tab.select(h.first_show, ui.view_inputs, ui.view_outputs, **common)  # draw the bars when first opened

    def open_step_event(inputs: list) -> dict:
        return dict(fn=page.open_step, inputs=[*inputs, ui.top_n, ui.query], outputs=with_settings, **common)

    def restore_event(restored: gr.State) -> dict:
        return dict(fn=page.restore, inputs=[restored, ui.top_n, ui.query, *gen_settings], outputs=with_settings,
                    **common)

    return NextTokenTab(ui.text, dict(fn=page.on_text, inputs=[ui.text, ui.top_n, ui.query, *gen_settings],
                                      outputs=with_settings, **common), open_step_event, restore_event)


def build(tab: gr.Tab, ctx: AppContext, gen_controls: dict) -> NextTokenTab:
    """The Next-token tab, built inside ``tab``; ``gen_controls`` are the Generate tab's sampling inputs
    (copied in and out)."""
    ui = layout()
    h = NextTokenHandlers(ctx.manager, ctx.cache, ctx.gpu)
    return wire(tab, ui, h, NextTokenPage(h, ui, ctx.manager), ctx, gen_controls)
