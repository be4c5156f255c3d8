"""The Next-token tab (probability bars, step-through generation, token look-up, logit lens, the
/next_token and /logit_lens API) and the probability-coloured output under the Generate tab.

Handlers validate every input, call :mod:`demo.next_token` and format with
:mod:`demo.plots_next_token`. The tab has its own copy of the sampling sliders, next to the bars, so
a student sees the values that shape them; "Explore the next token →" on the Generate tab copies the
Generate tab's settings in, and two buttons copy them either way.
"""

from __future__ import annotations

import html

import gradio as gr

from . import next_token as nt
from . import plots_next_token as plots
from .backend import clean_text
from .components import MODEL_QUEUE
from .errors import ValidationError
from .gpu import gpu
from .sampling import PRESETS, SamplingParams, check_number, validate_sampling
from .tokens import display_token

SET_KEYS = ["do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "no_repeat_ngram_size", "seed"]
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

VIEW_HELP = """Each generated token is coloured by the probability it had **when it was drawn** (after the
sampling settings). Hover a token (or focus it with Tab) to see the top alternatives. **Branching:** click a
token (or choose it below), pick another token to put in its place, then press *Branch*: the prompt
above is cut there and ends with your token — press **Generate** to continue the new branch."""


def _settings(values: list) -> SamplingParams:
    return validate_sampling(**dict(zip(SET_KEYS, values)))


def _top_n(value) -> int:
    return check_number("number of bars", value, 1, nt.MAX_TOP_N, integer=True)


def _gr_error(exc: Exception) -> gr.Error:
    from .ui import as_gr_error

    return as_gr_error(exc)


# ----------------------------------------------------------------------------- formatting (pure)


def _code(label: str) -> str:
    """A token label inside Markdown inline code (escaped; backticks can't end the span)."""
    return f"<code>{html.escape(label)}</code>"


def format_summary(data: dict, context_length: int) -> str:
    ml = data["most_likely"]
    eb, ea = data["entropy_before_bits"], data["entropy_after_bits"]
    lines = [
        f"**Next token after** {_code(data['last_token'])} · {data['context_tokens']} tokens of context · "
        f"model *{html.escape(data['model'])}*",
        f"**{'Greedy picks' if data['greedy'] else 'Most likely'}:** {_code(ml['token'])} — "
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
        line = (f"{_code(r['query_label'])}: rank **{r['rank']:,}** for the model · {plots.fmt_prob(r['raw_prob'])} "
                f"for the model · {plots.fmt_prob(r['prob'])} after the settings ({status})")
        if r["n_tokens"] > 1:
            pieces = " ".join(_code(p) for p in r["pieces"])
            line += (f"<br>&nbsp;&nbsp;it is {r['n_tokens']} tokens ({pieces}): the numbers are for its first token "
                     f"{_code(r['token'])}")
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
    base, full = nt.decode(loaded, ids), nt.decode(loaded, list(ids) + [int(token_id)])
    if base == text:
        return full
    if full.startswith(base):
        return text + full[len(base):]
    return text + nt.decode(loaded, [int(token_id)])


class NextTokenHandlers:
    """The tab's server functions. ``state`` is a per-session dict: the text shown, its token ids
    (kept so a step appends exactly one token even when the text would re-tokenize differently) and
    the undo history."""

    def __init__(self, manager, cache: nt.LogitsCache = nt.CACHE):
        self.manager = manager
        self.cache = cache

    # -- helpers

    def _ids(self, loaded, text: str, state) -> list[int]:
        if isinstance(state, dict) and state.get("model") == loaded.name and state.get("text") == text:
            return list(state["ids"])
        return nt.text_ids(loaded, text)

    @staticmethod
    def _state(loaded, text, ids, state, history=None) -> dict:
        if history is None:
            history = list(state.get("history", [])) if isinstance(state, dict) else []
        return {"model": loaded.name, "text": text, "ids": list(ids), "history": history[-MAX_HISTORY:]}

    def analyse(self, text, state, top_n, settings: list, query="") -> tuple[dict, dict, list[dict]]:
        """(view data, new state, look-up results) for a text and settings."""
        loaded = self.manager.require()
        text = clean_text("text", text)
        params = _settings(settings)
        n = _top_n(top_n)
        ids = self._ids(loaded, text, state)
        dist = nt.distribution(loaded, ids, params, self.cache)
        data = dist.as_dict(loaded, n)
        data["repeated_tokens"] = len(set(dist.window_ids))
        found = nt.lookup(loaded, dist, query) if isinstance(query, str) and query.strip("\n") else []
        return data, self._state(loaded, text, ids, state), found

    def view(self, data: dict, found: list[dict]) -> list:
        """[plot, summary, note, table, choose dropdown, look-up]"""
        loaded = self.manager.require()
        choices = [(f"look-up: {r['query_label']} → first token {r['token']}   {plots.fmt_prob(r['raw_prob'])} → "
                    f"{plots.fmt_prob(r['prob'])}{'' if r['kept'] else '  (filtered)'}", r["id"]) for r in found]
        choices += [(choice_label(r), r["id"]) for r in data["rows"]]
        value = None
        if found:
            value = max(found, key=lambda r: r["raw_prob"])["id"]
        return [plots.bars_figure(data), format_summary(data, loaded.context_length),
                format_note(data, data["repeated_tokens"]), table_rows(data),
                gr.Dropdown(choices=choices, value=value), format_lookup(found)]

    # -- events (outputs: text, state, plot, summary, note, table, choose, lookup, step message)

    def refresh(self, text, state, top_n, query, *settings):
        try:
            data, state, found = self.analyse(text, state, top_n, list(settings), query)
            return [gr.update(), state, *self.view(data, found), gr.update()]
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc

    def first_show(self, text, state, top_n, query, *settings):
        """When the tab is opened: draw the bars once (later visits keep what is there)."""
        if state is not None:
            return [gr.update()] * 9
        return self.refresh(text, state, top_n, query, *settings)

    def step(self, mode: str, text, state, top_n, query, chosen, *settings):
        try:
            loaded = self.manager.require()
            text = clean_text("text", text)
            params = _settings(list(settings))
            ids = self._ids(loaded, text, state)
            if mode == "chosen" and (chosen is None or chosen == ""):
                raise ValidationError("choose a token from the list first (or look one up)")
            s = nt.next_step(loaded, ids, params, mode, chosen, self.cache)
            new_ids = ids + [s.token_id]
            # an undo entry is the text and how many tokens it had: its ids are a prefix of the new ones
            history = (list(state.get("history", [])) if isinstance(state, dict) else []) + [{"text": text, "n": len(ids)}]
            new_text = appended_text(loaded, text, ids, s.token_id)
            new_state = self._state(loaded, new_text, new_ids, None, history)
            label = display_token(loaded.tokenizer, s.token_id)
            how = {"most likely": "the most likely token", "chosen": "your token",
                   "sampled": f"a sampled token (seed {s.seed}, step {s.step})"}[s.mode]
            msg = (f"Appended {how}: {_code(label)} — it had {plots.fmt_prob(s.raw_prob)} for the model and "
                   f"{plots.fmt_prob(s.prob)} after the settings.")
            if mode == "sampled" and s.mode == "most likely":
                msg += " (Sampling is off in the settings, so the sampler takes the most likely token.)"
            if s.prob == 0:
                msg += " The settings had filtered it out: the sampler could never have drawn it."
            data, new_state, found = self.analyse(new_text, new_state, top_n, list(settings), query)
            return [new_text, new_state, *self.view(data, found), msg]
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc

    def undo(self, text, state, top_n, query, *settings):
        try:
            if not isinstance(state, dict) or not state.get("history"):
                raise ValidationError("nothing to undo: no token has been appended yet")
            history = list(state["history"])
            prev = history.pop()
            loaded = self.manager.require()
            ids = list(state.get("ids", []))[: int(prev["n"])]
            if state.get("model") != loaded.name or nt.decode(loaded, ids) != prev["text"]:
                ids = nt.text_ids(loaded, prev["text"])  # the text was edited in between: tokenize it again
            restored = {"model": loaded.name, "text": prev["text"], "ids": ids, "history": history}
            data, new_state, found = self.analyse(prev["text"], restored, top_n, list(settings), query)
            return [prev["text"], new_state, *self.view(data, found), "Undone: back to the previous text."]
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc

    def lens(self, text, state, positions):
        try:
            loaded = self.manager.require()
            text = clean_text("text", text)
            ids = self._ids(loaded, text, state)
            result = nt.logit_lens(loaded, ids, positions)
            msg = LENS_NOTE
            if result.shown_from:
                msg += (f"\n\nShowing the last {len(result.positions)} of {len(result.positions) + result.shown_from} "
                        "positions (the model still read all of them).")
            if result.dropped:
                msg += f" The first {result.dropped:,} tokens did not fit the context window and were dropped."
            return plots.lens_figure(result.as_dict()), msg
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc

    # -- API (typed for gr.api)

    def api_next_token(self, text: str, do_sample: bool = True, temperature: float = 0.8, top_k: int = 0,
                       top_p: float = 0.95, min_p: float = 0.0, repetition_penalty: float = 1.1,
                       no_repeat_ngram_size: int = 0, top_n: int = 20) -> dict:
        """The next-token distribution of `text` before and after the sampling settings: one row per token
        (token, id, raw_prob, prob after the settings, kept, rank, rank_after), entropies in bits, survivors."""
        try:
            data, _, _ = self.analyse(text, None, top_n, [do_sample, temperature, top_k, top_p, min_p,
                                                          repetition_penalty, no_repeat_ngram_size, None])
            data.pop("repeated_tokens", None)
            return data
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc

    def api_logit_lens(self, text: str, positions: int = 16) -> dict:
        """Logit lens of `text`: for each of the last `positions` positions, the top next token (and its
        probability) read from every layer's residual stream through the final layer norm and unembedding."""
        try:
            loaded = self.manager.require()
            ids = nt.text_ids(loaded, clean_text("text", text))
            return nt.logit_lens(loaded, ids, positions).as_dict()
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc


def copy_settings(*values):
    """Copy sampling values between the tabs' sliders (same order: SET_KEYS, then maybe the preset).
    A seed box may hand over None for "random": shown as -1."""
    values = list(values)
    seed_at = SET_KEYS.index("seed")
    if len(values) > seed_at and (values[seed_at] is None or values[seed_at] == ""):
        values[seed_at] = -1
    return values


def apply_local_preset(name):
    p = PRESETS.get(name)
    if p is None:
        return [gr.update()] * 7
    return [p.do_sample, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.no_repeat_ngram_size]


# ----------------------------------------------------------------------------- layout


def local_controls(defaults: SamplingParams = PRESETS["Balanced"]) -> dict:
    c = {}
    c["preset"] = gr.Radio(list(PRESETS), value="Balanced", label="Preset")
    c["do_sample"] = gr.Checkbox(value=defaults.do_sample, label="Sample (off = greedy)")
    c["temperature"] = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature",
                                 info="< 1 sharpens the bars, > 1 flattens them")
    c["top_k"] = gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k", info="keep the k most likely (0 = off)")
    c["top_p"] = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.01, label="Top-p",
                           info="keep the top tokens holding this much probability")
    c["min_p"] = gr.Slider(0.0, 0.5, value=defaults.min_p, step=0.01, label="Min-p",
                           info="drop tokens under min-p × the top token's probability")
    c["repetition_penalty"] = gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05,
                                        label="Repetition penalty", info="> 1: tokens already used get less likely")
    c["no_repeat_ngram_size"] = gr.Slider(0, 10, value=defaults.no_repeat_ngram_size, step=1,
                                          label="No-repeat n-gram size", info="0 = off")
    c["seed"] = gr.Number(value=-1, precision=0, label="Seed for sampled steps", info="-1 = random")
    return c


def build_next_token_tab(manager, controls: dict) -> dict:
    h = NextTokenHandlers(manager)
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
                local = local_controls()
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

    settings = [local[k] for k in SET_KEYS]
    view_in = [text, state, top_n, query] + settings
    view_out = [text, state, plot, summary, note, table, choose, lookup_md, step_md]
    # Forward passes share the generation's concurrency group: one model on one device.
    common = dict(api_visibility="private", **MODEL_QUEUE)

    refresh = gpu(h.refresh)
    show_btn.click(refresh, view_in, view_out, **common)
    text.submit(refresh, view_in, view_out, **common)
    lookup_btn.click(refresh, view_in, view_out, **common)
    query.submit(refresh, view_in, view_out, **common)
    for comp in settings[:-1] + [top_n]:  # the seed only matters to sampled steps
        comp.input(refresh, view_in, view_out, trigger_mode="always_last", **common)
    local["preset"].input(apply_local_preset, local["preset"], settings[:-1], api_visibility="private").then(
        refresh, view_in, view_out, **common)

    def stepper(mode):
        def fn(text_, state_, top_n_, query_, chosen_, *settings_):
            return h.step(mode, text_, state_, top_n_, query_, chosen_, *settings_)
        return gpu(fn)

    step_in = [text, state, top_n, query, choose] + settings
    greedy_btn.click(stepper("most likely"), step_in, view_out, **common)
    sample_btn.click(stepper("sampled"), step_in, view_out, **common)
    choose_btn.click(stepper("chosen"), step_in, view_out, **common)
    undo_btn.click(gpu(h.undo), view_in, view_out, **common)
    lens_btn.click(gpu(h.lens), [text, state, lens_n], [lens_plot, lens_md], **common)

    gen_settings = [controls[k] for k in SET_KEYS] + [controls["preset"]]
    from_gen.click(copy_settings, gen_settings, settings + [local["preset"]], api_visibility="private").then(
        refresh, view_in, view_out, **common)
    to_gen.click(copy_settings, [local[k] for k in SET_KEYS if k != "preset"],
                 [controls[k] for k in SET_KEYS], api_visibility="private")

    gr.api(gpu(h.api_next_token), api_name="next_token", **MODEL_QUEUE)
    gr.api(gpu(h.api_logit_lens), api_name="logit_lens", **MODEL_QUEUE)

    from gradio.context import Context

    tab = Context.block
    if isinstance(tab, gr.Tab):  # draw the bars the first time the tab is opened
        tab.select(gpu(h.first_show), view_in, view_out, **common)

    def on_text(text_, top_n_, query_, *gen_values):
        """Text (and settings) arrive from the Generate tab: copy the settings, start a fresh history."""
        values = copy_settings(*gen_values)
        out = h.refresh(text_, None, top_n_, query_, *values[: len(SET_KEYS)])
        return values + out

    return {"text": text,
            "on_text": dict(fn=gpu(on_text), inputs=[text, top_n, query] + gen_settings,
                            outputs=settings + [local["preset"]] + view_out, api_visibility="private")}


# ----------------------------------------------------------------------------- probability-coloured output


class TokenViewHandlers:
    def __init__(self, manager):
        self.manager = manager

    @staticmethod
    def _alternatives(record: dict, pos: int) -> list[tuple[str, int]]:
        tok = record["tokens"][pos]
        out = []
        for alt in tok.get("alternatives", []):
            mark = "  (drawn)" if alt["id"] == tok["id"] else ("  (was filtered)" if alt["prob"] <= 0 else "")
            out.append((f"{alt['label']}   {plots.fmt_prob(alt['prob'])}{mark}", int(alt["id"])))
        return out

    def on_generation(self, record):
        if not isinstance(record, dict) or not record.get("tokens"):
            return plots.token_view_html(None), gr.Dropdown(choices=[], value=None), gr.Radio(choices=[], value=None), ""
        positions = [(f"#{i + 1}  {t['label']}   {plots.fmt_prob(t['prob'])}", i) for i, t in enumerate(record["tokens"])]
        return (plots.token_view_html(record), gr.Dropdown(choices=positions, value=None),
                gr.Radio(choices=[], value=None), "")

    def select(self, record, position):
        try:
            if not isinstance(record, dict) or not record.get("tokens"):
                raise ValidationError("generate some text first")
            pos = check_number("position", position, 0, len(record["tokens"]) - 1, integer=True)
            alts = self._alternatives(record, pos)
            drawn = record["tokens"][pos]["id"]
            first_other = next((i for _, i in alts if i != drawn), None)
            return (pos, gr.Radio(choices=alts, value=first_other), plots.token_view_html(record, selected=pos))
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc

    def clicked(self, record, evt: gr.EventData):
        return self.select(record, getattr(evt, "pos", None) if evt is not None else None)

    def branch(self, record, position, token_id):
        try:
            loaded = self.manager.require()
            if position is None or position == "":
                raise ValidationError("click a token in the coloured text (or choose one in the list) first")
            if token_id is None or token_id == "":
                raise ValidationError("choose the token to put in its place")
            new_prompt = nt.branch_prompt(loaded, record, position, token_id)
            pos = check_number("position", position, 0, len(record["tokens"]) - 1, integer=True)  # valid by now
            label = display_token(loaded.tokenizer, nt.check_token_id(loaded, token_id))
            old = record["tokens"][pos]["label"]
            where = f"Cut after token #{pos}" if pos else "Cut at the start of the generated text"
            msg = (f"✂ {where} and put {_code(label)} in place of token #{pos + 1} {_code(old)}. The prompt above "
                   "now ends there: press **Generate** to continue this branch.")
            return new_prompt, msg
        except Exception as exc:  # noqa: BLE001
            raise _gr_error(exc) from exc


def build_token_view(manager, last_generation, prompt, controls) -> dict:
    h = TokenViewHandlers(manager)
    with gr.Accordion("How likely was each token? (probability-coloured output)", open=True):
        gr.Markdown(VIEW_HELP)
        view = gr.HTML(plots.token_view_html(None), css_template=plots.TOKEN_VIEW_CSS,
                       js_on_load=plots.TOKEN_VIEW_JS, elem_id="token-view")
        with gr.Row(equal_height=True):
            position = gr.Dropdown(choices=[], value=None, label="Token to change", scale=2)
            alternative = gr.Radio(choices=[], value=None, label="Put this token in its place", scale=3)
        with gr.Row():
            branch_btn = gr.Button("✂ Branch: cut here and put in this token", size="sm")
        branch_md = gr.Markdown("")
    common = dict(api_visibility="private")
    view.token_click(h.clicked, [last_generation], [position, alternative, view], **common)
    position.input(h.select, [last_generation, position], [position, alternative, view], **common)
    branch_btn.click(h.branch, [last_generation, position, alternative], [prompt, branch_md], **common)
    return {"on_generation": dict(fn=h.on_generation, inputs=[last_generation],
                                  outputs=[view, position, alternative, branch_md], api_visibility="private")}
