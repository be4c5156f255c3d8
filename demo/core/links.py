"""Links that restore a lesson: what a page shows (model, prompt, sampling settings and seed, tab, the
analysed text and the attention view), written into the fragment of a URL and read back. No Gradio.

The state travels in the URL's fragment (``#tab=attention&layer=2&…``), which the browser never sends
to the server with the page request: a long or hostile link cannot stop the page from loading. The
page hands the fragment to the server, where :func:`read_link` checks every value with the same
checks the API applies and returns the valid ones with a list of what it had to leave out, so a bad
link opens the page with a notice instead of an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict
from urllib.parse import parse_qsl, quote_plus, urlencode

from demo.core.attention_views import AGGREGATES, SCOPES, VIEWS
from demo.core.errors import ExplorerError
from demo.core.sampling import MAX_NEW_TOKENS, SETTING
from demo.core.tokens import shorten
from demo.core.validation import MAX_TEXT_CHARS, check_choice, check_number, check_text, well_formed

MAX_LINK_CHARS = 32_000  # a longer link is refused whole (a 1 MB prompt has no place in a URL)
MAX_FIELDS = 40
MAX_LINK_TEXT = 4_000  # characters of a prompt or text a link carries
TABS = ("generate", "samples", "attention", "next_token", "precision", "about")
GENERATION = (MAX_NEW_TOKENS.name, *SETTING)  # the Generate tab's settings, in the page's order
ATTENTION = ("view", "layer", "head", "aggregate", "token", "scope")
MAX_INDEX = 4_096  # a layer, head or token index beyond any model the app serves


@dataclass
class LinkState:
    """The valid values of a link (None: not in the link, or left out) and the problems found."""

    model: str | None = None
    precision: str | None = None
    tab: str | None = None
    prompt: str | None = None
    settings: dict = field(default_factory=dict)  # name -> value, of GENERATION
    text: str | None = None  # the analysis tab's text
    output: str | None = None  # the generated text the link was made from (shown as text, never run)
    attention: dict = field(default_factory=dict)  # name -> value, of ATTENTION
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.model or self.tab or self.prompt or self.settings or self.text or self.output
                    or self.attention)



class LinkRequest(TypedDict):
    """What a link asks the page for, as the page keeps it (a gr.State) while it restores the link in
    steps: the tab, the analysis text and attention view, the model, and the problems to report."""

    tab: str | None
    text: str | None
    attention: dict
    model: str | None
    precision: str | None
    output: bool  # the link carries the text it was made from
    seed: int | None  # the seed it sets (None: random, or none given)
    problems: list[str]


def link_request(state: LinkState, tab: str | None) -> LinkRequest:
    return LinkRequest(tab=tab, text=state.text, attention=dict(state.attention), model=state.model,
                       precision=state.precision, output=state.output is not None,
                       seed=state.settings.get("seed"), problems=list(state.problems))


def reproducing(record, model: str, precision: str, prompt: str) -> tuple[dict, str] | None:
    """(the settings that make this generation again, its text) when ``record`` (the page's last
    generation) is a text of this model and precision from this prompt, else None. The settings are
    the ones it was made with and the seed it was drawn with (not -1, "random"); a text cut short
    (Stop, the end-of-text token) sets Max new tokens to the tokens it has, so the same link makes the
    same text and no more."""
    if not isinstance(record, dict) or record.get("model") != model or record.get("precision") != precision:
        return None
    if record.get("prompt") != prompt or not isinstance(record.get("settings"), dict):
        return None
    settings = {name: record["settings"][name] for name in GENERATION if name in record["settings"]}
    n = len(record.get("tokens") or [])
    if n >= 1 and isinstance(settings.get(MAX_NEW_TOKENS.name), int):
        settings[MAX_NEW_TOKENS.name] = min(n, settings[MAX_NEW_TOKENS.name])
    text = record.get("text")
    return settings, text if isinstance(text, str) else ""


def _check_setting(name: str, value: str):
    setting = MAX_NEW_TOKENS if name == MAX_NEW_TOKENS.name else SETTING[name]
    if setting.kind == "seed" and value.strip() in ("", "-1"):
        return None
    return setting.check(value, slider=True)  # what the page's sliders accept


def read_link(fragment, models: list[str], precisions: list[str]) -> LinkState:
    """The state a link's fragment describes (without the '#'), every value checked; a value that fails
    its check is left out and named in ``problems``."""
    state = LinkState()
    if not isinstance(fragment, str) or not fragment.strip("#"):
        return state
    if len(fragment) > MAX_LINK_CHARS:
        state.problems.append(f"the link is too long ({len(fragment):,} characters; at most {MAX_LINK_CHARS:,}), "
                              "so none of it was used")
        return state
    # a lone surrogate (sent through the API; a browser encodes one as U+FFFD) becomes '?': no value or
    # message with one could be sent back as UTF-8
    fragment = fragment.encode("utf-8", errors="replace").decode("utf-8")
    try:
        pairs = parse_qsl(fragment.lstrip("#"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        state.problems.append(f"the link has more than {MAX_FIELDS} values, so none of it was used")
        return state
    seen: set[str] = set()
    for key, value in pairs:
        if key in seen:
            state.problems.append(f"{shorten(key, 40)} is given twice (the first one was used)")
            continue
        seen.add(key)
        try:
            if key == "model":
                state.model = check_choice("model", value, models, exact=True)
            elif key == "precision":
                state.precision = check_choice("precision", value, precisions, exact=True)
            elif key == "tab":
                state.tab = check_choice("tab", value, list(TABS), exact=True)
            elif key in ("prompt", "text", "output"):
                setattr(state, key, check_text(key, value, min(MAX_LINK_TEXT, MAX_TEXT_CHARS)))
            elif key in GENERATION:
                state.settings[key] = _check_setting(key, value)
            elif key == "view":
                state.attention[key] = check_choice("view", value, list(VIEWS), exact=True)
            elif key == "aggregate":
                state.attention[key] = check_choice("aggregate", value, list(AGGREGATES), exact=True)
            elif key == "scope":
                state.attention[key] = check_choice("scope", value, list(SCOPES), exact=True)
            elif key in ("layer", "head", "token"):
                state.attention[key] = check_number(key, value, 0, MAX_INDEX, integer=True)
            else:
                state.problems.append(f"{shorten(key, 40)!r} is not something a link can set")
        except ExplorerError as exc:
            state.problems.append(str(exc))
    return state


def _fit(text: str, budget: int) -> str:
    """The longest end of ``text`` (a prompt is read from its end, like the model reads it) within
    MAX_LINK_TEXT characters and ``budget`` characters once written into a URL."""
    text = text[-MAX_LINK_TEXT:]
    lo, hi = 0, len(text)  # the shortest cut that fits: binary search on how much to drop from the start
    while lo < hi:
        mid = (lo + hi) // 2
        if len(quote_plus(text[mid:])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return text[lo:]


def make_link(model: str, precision: str, tab: str, prompt: str, settings: dict, text: str | None = None,
              attention: dict | None = None, output: str | None = None) -> tuple[str, list[str]]:
    """(the fragment, without '#', of a link to this state; what had to be shortened). The values are the
    page's, already valid; the prompt, text and generated output are kept whole when the link can hold
    them, else their ends are kept (a link stays under MAX_LINK_CHARS, or it would not be read back)."""
    values: list[tuple[str, object]] = [("model", model), ("precision", precision), ("tab", tab)]
    texts = {k: well_formed(v) for k, v in (("prompt", prompt), ("text", text), ("output", output))
             if isinstance(v, str) and v.strip()}
    for name in GENERATION:
        value = settings.get(name)
        if name == "seed" and value is None:
            value = -1
        if isinstance(value, bool):
            value = str(value).lower()
        if value is not None:
            values.append((name, value))
    for name in ATTENTION:
        if attention and attention.get(name) is not None:
            values.append((name, attention[name]))
    budget = (MAX_LINK_CHARS - len(urlencode(values)) - 20) // max(1, len(texts))
    shortened = []
    for name, value in texts.items():
        fitted = _fit(value, budget)
        if fitted != value:
            shortened.append(f"the {name} (its last {len(fitted):,} of {len(value):,} characters)")
        values.append((name, fitted))
    return urlencode(values), shortened
