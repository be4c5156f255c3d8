"""The Next-token tab: probability bars before and after the sampling settings, step-through
generation, token look-up, the logit lens, and the /next_token and /logit_lens API.

Handlers validate every input, call :mod:`demo.next_token` and format with
:mod:`demo.plots_next_token`. The tab has its own set of the sampling sliders, next to the bars, so
a student sees the values that shape them; "Explore the next token →" on the Generate tab copies the
Generate tab's settings in, and two buttons copy them either way.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import NamedTuple

import gradio as gr

from .. import next_token as nt
from .. import plots_next_token as plots
from .. import steps
from ..backend import ModelManager
from ..cache import ModelCache
from ..errors import ValidationError
from ..plots_next_token import code_label
from ..sampling import NAMES, SETTING, SamplingParams, validate_sampling
from ..tokens import display_token
from ..validation import check_choice, check_index, check_number, check_text, encode_text
from .common import PRIVATE, AppContext, current_session, unchanged, user_errors, with_parameters
from .inputs import PRESET_TARGETS, preset_radio, preset_values, sampling_inputs

DEFAULT_TEXT = "It was a dark and stormy night, and"
MAX_BARS = 50
MAX_HISTORY = 200

INTRO = """At every step a GPT gives **every token of its vocabulary** a probability of coming next.
The light bars are the model's own probabilities; the dark bars are what is left after the sampling
settings (temperature, top-k, top-p, min-p, penalties): the sampler draws the next token from the dark
bars. Struck-through, grey tokens have been filtered out and can no longer be drawn. Drive the model
yourself with the buttons: add the most likely token, a sampled one, or any token you pick."""

LENS_NOTE = """**Logit lens.** A GPT passes each token through a stack of layers that keep adding to a
running vector (the *residual stream*). Here that vector is read **after every layer** with the model's
final layer norm and output matrix, as if the model stopped there. Bottom row: only the token
embeddings; top row: the model's real prediction. Each cell is the most likely next token at that depth,
darker = more confident; hover for the runners-up. Watch where the final answer first appears."""

LOCAL_LABELS = {"do_sample": "Sample (off = greedy)", "seed": "Seed for sampled steps"}  # unlike the Generate tab's
# /next_token's parameters: the text, the sampling settings but the seed (no draw happens), the bars.
API_SETTINGS = [n for n in NAMES if n != "seed"]


def _settings(values: list) -> SamplingParams:
    """Sampling settings from the tab's inputs, in :data:`demo.sampling.NAMES` order."""
    return validate_sampling(**dict(zip(NAMES, values)))


def _top_n(value) -> int:
    return check_number("number of bars", value, 1, nt.MAX_TOP_N, integer=True)


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
    step: object


# ----------------------------------------------------------------------------- formatting (pure)


def format_summary(data: dict, context_length: int) -> str:
    ml = data["most_likely"]
    eb, ea = data["entropy_before_bits"], data["entropy_after_bits"]
    lines = [
        f"**Next token after** {code_label(data['last_token'])} · {data['context_tokens']} tokens of context · "
        f"model *{html.escape(data['model'])}*",
        f"**{'Greedy picks' if data['greedy'] else 'Most likely'}:** {code_label(ml['token'])} — "
        f"{plots.fmt_prob(ml['raw_prob'])} for the model, {plots.fmt_prob(ml['prob'])} after the settings.",
        f"**{data['survivors']:,} of {data['vocab_size']:,} tokens** can still be drawn · **entropy** "
        f"{eb:.2f} → {ea:.2f} bits (as uncertain as a fair pick among ≈ {2 ** eb:,.0f} → {2 ** ea:,.0f} tokens)",
    ]
    if data["truncated_tokens"]:
        lines.append(f"⚠️ The text is longer than the model's context window ({context_length} tokens): the model "
                     f"sees only the last {data['context_tokens']}; the first {data['truncated_tokens']:,} tokens "
                     "were dropped.")
    return "\n\n".join(lines)


def format_note(data: dict, repeated_tokens: int) -> str:
    """What each setting did to the bars, in plain language and with this text's numbers."""
    s = data["settings"]
    steps = data["steps"]
    out = []
    before = data["vocab_size"]
    for st in steps:
        name, v, left = st["name"], st["value"], st["survivors"]
        if name == "repetition penalty":
            out.append(f"**Repetition penalty ×{v:g}:** the {repeated_tokens} different tokens already in the text "
                       f"were made {'less' if v > 1 else 'more'} likely (their dark bar is "
                       f"{'shorter' if v > 1 else 'longer'} than it would be).")
        elif name == "no-repeat n-gram":
            out.append(f"**No-repeat {int(v)}-grams:** {before - left} token(s) banned because they would repeat a "
                       f"{int(v)}-token sequence already in the text.")
        elif name == "temperature":
            if v < 1:
                out.append(f"**Temperature {v:g} (below 1)** sharpens the distribution: tall bars grow, short bars "
                           "shrink — safer, more predictable text.")
            else:
                out.append(f"**Temperature {v:g} (above 1)** flattens the distribution: short bars grow, tall bars "
                           "shrink — more surprising text, and more mistakes.")
        elif name == "top-k":
            out.append(f"**Top-k {int(v)}** keeps only the {int(v)} most likely tokens: {left:,} left.")
        elif name == "top-p":
            out.append(f"**Top-p {v:g}** keeps the most likely tokens until their probabilities add up to "
                       f"{v:.0%}: here that is {left:,} token(s).")
        elif name == "min-p":
            out.append(f"**Min-p {v:g}** drops tokens less than {v:.0%} as likely as the top token: {left:,} left.")
        before = left
    if data["greedy"]:
        out.insert(0, "**Sampling is off (greedy):** the model always takes the top dark bar, so temperature, "
                      "top-k, top-p and min-p play no part; only the penalties apply.")
    else:
        off = []
        if s["temperature"] == 1.0:
            off.append("temperature 1 (no change)")
        if s["top_k"] == 0:
            off.append("top-k 0")
        if s["top_p"] >= 1.0:
            off.append("top-p 1")
        if s["min_p"] == 0:
            off.append("min-p 0")
        if off:
            out.append("Off: " + ", ".join(off) + ".")
        out.append(f"Then the sampler draws one of the **{data['survivors']:,}** remaining tokens, each with the "
                   "probability of its dark bar; the same seed repeats the same draw.")
    if not steps and data["greedy"]:
        out.append("No penalty is set: the dark bars equal the light ones.")
    return "\n\n".join("• " + line for line in out)


def format_lookup(results: list[dict]) -> str:
    if not results:
        return ""
    lines = []
    for r in results:
        status = (f"rank {r['rank_after']} after the settings" if r["kept"] else "**filtered out** by the settings")
        line = (f"{code_label(r['query_label'])}: rank **{r['rank']:,}** for the model · "
                f"{plots.fmt_prob(r['raw_prob'])} for the model · {plots.fmt_prob(r['prob'])} after the settings "
                f"({status})")
        if r["n_tokens"] > 1:
            pieces = " ".join(code_label(p) for p in r["pieces"])
            line += (f"<br>&nbsp;&nbsp;it is {r['n_tokens']} tokens ({pieces}): the numbers are for its first token "
                     f"{code_label(r['token'])}")
        lines.append(line)
    return "\n\n".join(lines) + "\n\nIt is now in the *choose a token* list, ready to append."


def table_rows(data: dict) -> list[list]:
    return [[r["rank"], r["token"], r["id"], plots.fmt_prob(r["raw_prob"]), plots.fmt_prob(r["prob"]),
             "kept" if r["kept"] else "filtered", r["rank_after"] if r["kept"] else "–"] for r in data["rows"]]


def choice_label(r: dict) -> str:
    kept = "" if r["kept"] else "  (filtered)"
    return f"{r['rank']}. {r['token']}   {plots.fmt_prob(r['raw_prob'])} → {plots.fmt_prob(r['prob'])}{kept}"


# ----------------------------------------------------------------------------- handlers


def appended_text(loaded, text: str, ids: list[int], token_id: int) -> str:
    """The text after appending one token to ``ids`` (which spell ``text``). Decoding the whole
    sequence joins a character split over several byte tokens; a text that does not decode back
    exactly (a tokenizer that normalises) keeps its own spelling and gets the new piece added."""
    base, full = loaded.decode(ids), loaded.decode(list(ids) + [int(token_id)])
    if base == text:
        return full
    if full.startswith(base):
        return text + full[len(base):]
    return text + loaded.decode([int(token_id)])


class NextTokenHandlers:
    """The tab's server functions. ``state`` is a per-session dict: the text shown, its token ids
    (kept so a step appends exactly one token even when the text would re-tokenize differently) and
    the undo history."""

    def __init__(self, manager: ModelManager, cache: ModelCache | None = None, gpu: Callable = lambda fn, **kw: fn):
        self.manager = manager
        self.cache = cache
        # The forward passes, where the model runs (a ZeroGPU worker on such hardware; else here): they
        # take and return plain data, and the cache and everything else stay in this process.
        self._logits = gpu(self._forward_logits)
        self._lens = gpu(self._logit_lens)

    @staticmethod
    def _forward_logits(loaded, window: list[int]):
        return nt.forward_last_logits(loaded, window)

    @staticmethod
    def _logit_lens(loaded, ids: list[int], positions: int) -> nt.LensResult:
        return nt.logit_lens(loaded, ids, positions)

    def _forward(self, loaded, window: list[int]):
        return self._logits(loaded, list(window))

    # -- helpers

    @staticmethod
    def _ids(loaded, text: str, state) -> list[int]:
        if isinstance(state, dict) and state.get("model") == loaded.name and state.get("text") == text:
            return list(state["ids"])
        return list(encode_text(loaded.tokenizer, text).ids)

    @staticmethod
    def _state(loaded, text, ids, state, history=None) -> dict:
        if history is None:
            history = list(state.get("history", [])) if isinstance(state, dict) else []
        return {"model": loaded.name, "text": text, "ids": list(ids), "history": history[-MAX_HISTORY:]}

    def analyse(self, text, state, top_n, settings: list, query="") -> tuple[dict, dict, list[dict]]:
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
        return NextTokenView(text=gr.skip(), state=state, step=gr.skip(), **self.view(data, found))

    def first_show(self, text, state, top_n, query, *settings) -> NextTokenView:
        """When the tab is opened: draw the bars once (later visits keep what is there)."""
        if state is not None:
            return unchanged(NextTokenView)
        return self.refresh(text, state, top_n, query, *settings)

    @user_errors
    def step(self, mode: str, text, state, top_n, query, chosen, *settings) -> NextTokenView:
        loaded = self.manager.require(current_session())
        mode = check_choice("step", mode, list(nt.STEP_MODES))
        text = check_text("text", text)
        params = _settings(list(settings))
        ids = self._ids(loaded, text, state)
        token_id = None
        if mode == "chosen":
            if chosen is None or chosen == "":
                raise ValidationError("choose a token from the list first (or look one up)")
            token_id = check_index("token id", chosen, loaded.vocab_size)
        s = nt.next_step(loaded, ids, params, mode, token_id, self.cache, self._forward)
        new_ids = ids + [s.token_id]
        # an undo entry is the text and how many tokens it had: its ids are a prefix of the new ones
        history = (list(state.get("history", [])) if isinstance(state, dict) else []) + [{"text": text, "n": len(ids)}]
        new_text = appended_text(loaded, text, ids, s.token_id)
        new_state = self._state(loaded, new_text, new_ids, None, history)
        label = display_token(loaded.tokenizer, s.token_id)
        how = {"most likely": "the most likely token", "chosen": "your token",
               "sampled": f"a sampled token (seed {s.seed}, step {s.step})"}[s.mode]
        msg = (f"Appended {how}: {code_label(label)} — it had {plots.fmt_prob(s.raw_prob)} for the model and "
               f"{plots.fmt_prob(s.prob)} after the settings.")
        if mode == "sampled" and s.mode == "most likely":
            msg += " (Sampling is off in the settings, so the sampler takes the most likely token.)"
        if s.prob == 0:
            msg += " The settings had filtered it out: the sampler could never have drawn it."
        data, new_state, found = self.analyse(new_text, new_state, top_n, list(settings), query)
        return NextTokenView(text=new_text, state=new_state, step=msg, **self.view(data, found))

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
        return NextTokenView(text=prev["text"], state=new_state, step="Undone: back to the previous text.",
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


class NextTokenTab(NamedTuple):
    text: gr.Textbox
    on_text: dict  # the event that receives a text and settings from the Generate tab
    open_step: Callable[[list], dict]  # inputs (record, position) -> the event that opens a generated token's step
    restore: Callable[[gr.State], dict]  # a link's state -> the event that draws its text, if it names this tab


def build(tab: gr.Tab, ctx: AppContext, gen_controls: dict) -> NextTokenTab:
    """The Next-token tab's contents, built inside ``tab``; ``gen_controls`` are the Generate tab's
    sampling inputs (copied in and out)."""
    h = NextTokenHandlers(ctx.manager, ctx.cache, ctx.gpu)
    gr.Markdown(INTRO)
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Text", value=DEFAULT_TEXT, lines=3, max_lines=12,
                              placeholder="Type a text: the bars show what could come next")
            with gr.Row():
                show_btn = gr.Button("Show the next token", variant="primary")
                greedy_btn = gr.Button("+ Most likely")
                sample_btn = gr.Button("+ Sampled")
                undo_btn = gr.Button("↶ Undo")
            with gr.Row(equal_height=True):
                choose = gr.Dropdown(choices=[], value=None, label="…or choose any token from the list",
                                     scale=4, allow_custom_value=False)
                choose_btn = gr.Button("+ Append chosen", scale=1)
            step_md = gr.Markdown("")
            summary = gr.Markdown("")
            plot = gr.Plot(plots.empty_figure("Press “Show the next token”"), show_label=False)
        with gr.Column(scale=2):
            with gr.Accordion("Sampling settings (this tab)", open=True):
                preset = preset_radio()
                local = sampling_inputs(labels=LOCAL_LABELS)
                with gr.Row():
                    from_gen = gr.Button("⇐ Copy from the Generate tab", size="sm")
                    to_gen = gr.Button("Send to the Generate tab ⇒", size="sm")
            top_n = gr.Slider(5, MAX_BARS, value=20, step=1, label="Bars to show")
            query = gr.Textbox(label="Look up a token or word", placeholder="e.g. night — ␣ = space, ↵ = newline",
                               max_lines=1)
            lookup_btn = gr.Button("Look up", size="sm")
            lookup_md = gr.Markdown("")
            note = gr.Markdown("", label="What the settings did")
    with gr.Accordion("Table of the tokens in the bars", open=False):
        table = gr.Dataframe(headers=["rank", "token", "id", "model", "after settings", "kept?", "rank after"],
                             interactive=False, wrap=True)
    with gr.Accordion("Logit lens: how the prediction forms through the layers", open=False):
        with gr.Row():
            lens_n = gr.Slider(4, nt.LENS_MAX_POSITIONS, value=16, step=1, label="Positions to show (the last ones)",
                               scale=3)
            lens_btn = gr.Button("Run the logit lens", scale=1)
        lens_md = gr.Markdown(LENS_NOTE)
        lens_plot = gr.Plot(show_label=False)

    settings = [local[n] for n in NAMES]
    view_in = [text, state, top_n, query] + settings
    components = dict(text=text, state=state, plot=plot, summary=summary, note=note, table=table, choose=choose,
                      lookup=lookup_md, step=step_md)
    view_out = [components[f] for f in NextTokenView._fields]
    common = dict(**PRIVATE, **ctx.model_queue)

    refresh = h.refresh
    for event in (show_btn.click, text.submit, lookup_btn.click, query.submit):
        event(refresh, view_in, view_out, **common)
    for comp in [local[n] for n in NAMES if n != "seed"] + [top_n]:  # the seed only matters to sampled steps
        comp.input(refresh, view_in, view_out, trigger_mode="always_last", **common)
    preset.input(preset_values, preset, [local[n] for n in PRESET_TARGETS], **PRIVATE).then(
        refresh, view_in, view_out, **common)

    def stepper(mode):
        def fn(text_, state_, top_n_, query_, chosen_, *settings_):
            return h.step(mode, text_, state_, top_n_, query_, chosen_, *settings_)
        return fn

    step_in = [text, state, top_n, query, choose] + settings
    greedy_btn.click(stepper("most likely"), step_in, view_out, **common)
    sample_btn.click(stepper("sampled"), step_in, view_out, **common)
    choose_btn.click(stepper("chosen"), step_in, view_out, **common)
    undo_btn.click(h.undo, view_in, view_out, **common)
    lens_btn.click(h.lens, [text, state, lens_n], [lens_plot, lens_md], **common)

    gen_settings = [gen_controls[n] for n in NAMES] + [gen_controls["preset"]]
    from_gen.click(copy_settings, gen_settings, settings + [preset], **PRIVATE).then(
        refresh, view_in, view_out, **common)
    to_gen.click(copy_settings, settings, [gen_controls[n] for n in NAMES], **PRIVATE)

    gr.api(api_next_token_function(h), api_name="next_token", **ctx.model_queue)
    gr.api(h.api_logit_lens, api_name="logit_lens", **ctx.model_queue)

    tab.select(h.first_show, view_in, view_out, **common)  # draw the bars when first opened

    def on_text(text_, top_n_, query_, *gen_values):
        """Text (and settings) arrive from the Generate tab: copy the settings, start a fresh history."""
        values = copy_settings(*gen_values)
        out = h.refresh(text_, None, top_n_, query_, *values[: len(NAMES)])
        return [*values, *out]

    @user_errors
    def open_step(record, position, top_n_, query_):
        """A generated token's step: the text the model had read when it drew it (its exact tokens), under
        the generation's own settings, with a fresh history."""
        loaded = ctx.manager.require(current_session())
        record, k = steps.check_step(loaded, record, position)
        ids = steps.step_context(record, k)
        text_ = loaded.decode(ids)
        values = copy_settings(*[(record.get("settings") or {}).get(n, SETTING[n].default) for n in NAMES])
        view = h.refresh(text_, {"model": loaded.name, "text": text_, "ids": ids, "history": []}, top_n_, query_,
                         *values)
        drawn = record["tokens"][k]
        note = (f"Opened token #{k + 1} of the generation: here the model drew {code_label(drawn.get('label', ''))} "
                f"(it had {plots.fmt_prob(float(drawn.get('prob', 0.0)))} after the settings). The bars are the "
                "distribution it was drawn from; the buttons take another path from here.")
        choose = view.choose
        if any(value == drawn.get("id") for _, value in choose.choices or []):
            choose = gr.Dropdown(choices=choose.choices, value=drawn.get("id"))
        return [*values, *view._replace(text=text_, step=note, choose=choose)]

    def open_step_event(inputs: list) -> dict:
        return dict(fn=open_step, inputs=[*inputs, top_n, query], outputs=settings + view_out, **common)

    def restore(restored: gr.State) -> dict:
        """The event that draws what a link names, if it names this tab: its text under the Generate tab's
        settings (which the link has just set)."""
        def draw(link, top_n_, query_, *gen_values):
            if not isinstance(link, dict) or link.get("tab") != "next_token" or not link.get("text"):
                return [gr.skip()] * (len(settings) + 1 + len(view_out))
            try:
                return on_text(link["text"], top_n_, query_, *gen_values)
            except gr.Error:
                return [gr.skip()] * (len(settings) + 1 + len(view_out))

        return dict(fn=draw, inputs=[restored, top_n, query] + gen_settings, outputs=settings + [preset] + view_out,
                    **common)

    return NextTokenTab(text, dict(fn=on_text, inputs=[text, top_n, query] + gen_settings,
                                   outputs=settings + [preset] + view_out, **common), open_step_event, restore)
