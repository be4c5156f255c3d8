"""Hostile input through the public API, and model safety.

Every named endpoint the app publishes (listed by ``view_api``; an endpoint missing from this build
is skipped) is called directly over HTTP with wrong types, NaN/inf, negative and huge numbers,
empty, 1-MB and past-the-context texts, control characters, lone surrogates, emoji/CJK and HTML/JS.
Each call must end in a clear error (a sentence, no traceback, no generic "Something went wrong")
or a correct result shaped like a normal call's, and the next normal request must work.

The calls go through the raw HTTP API (POST /gradio_api/call/<name>, then its SSE stream) because
NaN, Infinity and lone surrogates cannot be sent through gradio_client (its JSON encoder refuses them).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client.exceptions import AppError
from waiting import wait_until

from demo.core.sampling import SamplingParams
from demo.runtime.generation import live_generation_threads

REPO = Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), float("inf")
TEXT = "The old sea captain said"

# A known-good call per endpoint (keyword arguments; only what differs from the API's defaults).
# Endpoints not listed here are called with their defaults and TEXT for any text without one.
BASELINES = {
    "/generate": dict(prompt=TEXT, max_new_tokens=4, **SamplingParams(seed=1).as_dict()),
    "/load_model": dict(name="gutenberg-gpt", precision="fp32"),
    "/attention": dict(text=TEXT),
    "/next_token": dict(text=TEXT, top_n=5),
    "/logit_lens": dict(text=TEXT, positions=4),
}
KNOWN_ENDPOINTS = list(BASELINES)

TEXTS = {
    "empty": "",
    "blank": " \n\t ",
    "1 MB": "a" * (1 << 20),
    "past the context window": "It was a dark night. " * 1500,  # ~7,500 tokens, under the 50,000-character limit
    "control characters": "He said\x00\x01\x07\x1b[31m red\x7f\u200b\u202e done\r\n",
    "lone surrogates": "bad \ud800 half \udfff end",
    "emoji and CJK": "The 🚀 rocket 👩‍👩‍👧 family 日本語の文章 你好世界 한국어",
    "HTML/JS": '<img src=x onerror=alert(1)><script>alert("x")</script> the',
}
NUMBERS = {
    "negative": -1, "huge": 10**18, "huge float": 1e308, "fraction": 0.5,
    "word": "ten", "numeric string": "3", "empty string": "", "NaN": NAN, "Infinity": INF, "-Infinity": -INF,
}
BOOLEANS = {"word": "maybe", "two": 2, "NaN": NAN}
WRONG_TYPES = {"int": 123, "null": None, "bool": True, "list": [1, [2]], "dict": {"a": [None]}}
MAX_MESSAGE = 2_000


def hostile_values(param: dict) -> dict:
    kind = param["type"].get("type")
    values = dict(TEXTS if kind == "string" else NUMBERS if kind in ("number", "integer") else
                  BOOLEANS if kind == "boolean" else {})
    values.update({k: v for k, v in WRONG_TYPES.items() if not (k == "int" and kind in ("number", "integer"))})
    return values


# ----------------------------------------------------------------------------- raw HTTP calls


_HTTP: list[httpx.Client] = []


def http() -> httpx.Client:
    """One keep-alive HTTP client for all the calls (a new one per call costs more CPU than the call)."""
    if not _HTTP:
        _HTTP.append(httpx.Client(timeout=120))
    return _HTTP[0]


def raw_call(base_url: str, api_name: str, data: list, timeout_s: float = 120) -> tuple[str, object]:
    """('complete', outputs) or ('error', message) or ('http <status>', body) of one API call,
    sent as JSON that may hold NaN, Infinity and lone surrogates."""
    name = api_name.strip("/")
    body = json.dumps({"data": data}, ensure_ascii=True, allow_nan=True)
    r = http().post(f"{base_url}gradio_api/call/{name}", content=body, timeout=timeout_s,
                    headers={"content-type": "application/json"})
    if r.status_code >= 400:
        return f"http {r.status_code}", r.text[:500]
    event_id = r.json()["event_id"]
    event = None
    with http().stream("GET", f"{base_url}gradio_api/call/{name}/{event_id}", timeout=timeout_s) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line[5:].strip() or "null")
                if event == "error":
                    return "error", payload.get("error") if isinstance(payload, dict) else payload
                return "complete", payload
    return "no result", None


def shape(outputs) -> list[str]:
    return [type(o).__name__ for o in outputs] if isinstance(outputs, list) else [type(outputs).__name__]


def problem_with(outcome: tuple[str, object], baseline_shape: list[str]) -> str | None:
    """Why an outcome is not 'a clear error or a correct result' (None when it is)."""
    kind, value = outcome
    if kind == "error":
        if not isinstance(value, str) or not value.strip() or value.strip() in ("None", "Error"):
            return f"an error without a message: {value!r}"
        if "Traceback" in value or value.startswith("Something went wrong"):
            return f"an unhandled exception reached the user: {value[:300]!r}"
        if len(value) > MAX_MESSAGE:
            return f"an error message of {len(value):,} characters"
        return None
    if kind == "complete":
        if shape(value) != baseline_shape:
            return f"a result shaped {shape(value)} instead of {baseline_shape}"
        return None
    return f"{kind}: {str(value)[:300]!r}"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def endpoints(client) -> dict:
    return client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def call_args(endpoint: dict, api_name: str) -> dict:
    """Keyword arguments of a normal call: the endpoint's defaults, overridden by BASELINES."""
    args = {}
    for p in endpoint["parameters"]:
        if p.get("parameter_has_default"):
            args[p["parameter_name"]] = p.get("parameter_default")
        elif p["type"].get("type") == "string":
            args[p["parameter_name"]] = TEXT
    args.update(BASELINES.get(api_name, {}))
    return args


def check_endpoint(client, base_url: str, api_name: str, endpoint: dict) -> list[str]:
    """Run the whole battery against one endpoint; the list of problems found."""
    good = call_args(endpoint, api_name)
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    baseline = raw_call(base_url, api_name, [good[n] for n in names])
    assert baseline[0] == "complete", f"the normal {api_name} call failed: {baseline}"
    base_shape = shape(baseline[1])
    problems = []
    for param in endpoint["parameters"]:
        for label, value in hostile_values(param).items():
            data = [value if n == param["parameter_name"] else good[n] for n in names]
            why = problem_with(raw_call(base_url, api_name, data), base_shape)
            if why:
                problems.append(f"{api_name} {param['parameter_name']}={label}: {why}")
        # after each parameter's battery: the server is up and a normal call works
        after = raw_call(base_url, api_name, [good[n] for n in names])
        assert after[0] == "complete", \
            f"a normal {api_name} call failed after hostile {param['parameter_name']} values: {after}"
    assert client.predict(**good, api_name=api_name) is not None  # and through gradio_client
    return problems


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("api_name", KNOWN_ENDPOINTS)
def test_hostile_values_get_a_clear_error_or_a_correct_result(client, live_app, endpoints, api_name):
    if api_name not in endpoints:
        pytest.skip(f"{api_name} is not an endpoint of this build")
    problems = check_endpoint(client, live_app[1], api_name, endpoints[api_name])
    assert not problems, "\n".join(problems)
    assert live_app[0].manager.require().name == "gutenberg-gpt"
    assert not live_generation_threads()


def test_hostile_values_on_every_other_endpoint(client, live_app, endpoints):
    """Endpoints added after this file was written get the same battery."""
    others = [name for name in endpoints if name not in KNOWN_ENDPOINTS]
    if not others:
        pytest.skip("no endpoints besides " + ", ".join(KNOWN_ENDPOINTS))
    problems = [p for name in others for p in check_endpoint(client, live_app[1], name, endpoints[name])]
    assert not problems, "\n".join(problems)


def test_every_endpoint_is_listed_and_validated(endpoints):
    assert {"/generate", "/load_model"} <= set(endpoints)
    for name, ep in endpoints.items():
        assert ep["parameters"], f"{name} takes no parameters?"


def test_gradio_client_gets_the_same_clear_errors(client, endpoints):
    """The typed client path: each endpoint's first parameter of the wrong type is an AppError with
    a message, or is converted and answered."""
    for name, ep in endpoints.items():
        good = call_args(ep, name)
        first = ep["parameters"][0]["parameter_name"]
        try:
            client.predict(**{**good, first: None}, api_name=name)
        except AppError as exc:
            assert str(exc).strip() and "Traceback" not in str(exc), (name, str(exc))
        client.predict(**good, api_name=name)


def call_by_fn_index(base_url: str, fn_index: int, queued: bool, data: list, event_data) -> tuple[str, object]:
    """('complete', outputs) or ('error', message) of one event reached by its fn_index, as a page sends
    it (POST /queue/join, then the session's stream), or on the direct route for an event outside the queue."""
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data, "trigger_id": None}
    if not queued:
        r = http().post(f"{base_url}gradio_api/run/predict", json=body)
        answer = r.json()
        return ("complete", answer.get("data")) if r.status_code == 200 else ("error", answer.get("error"))
    r = http().post(f"{base_url}gradio_api/queue/join", json=body)
    if r.status_code != 200:
        return f"http {r.status_code}", r.text[:500]
    with http().stream("GET", f"{base_url}gradio_api/queue/data?session_hash={session}") as s:
        for line in s.iter_lines():
            msg = json.loads(line[5:]) if line.startswith("data:") else {}
            if msg.get("msg") == "process_completed":
                out = msg.get("output") or {}
                return ("complete", out.get("data")) if msg.get("success") else ("error", out.get("error"))
    return "no result", None


def test_every_event_reached_by_its_fn_index_answers_with_a_sentence(live_app):
    """The page's private events too (examples, clicks on tokens, re-runs, links): any client can send
    any of them, with values and event data of its own or none. Each ends in a sentence or a result."""
    demo, url = live_app
    problems = []
    for i, fn in demo.fns.items():
        if fn.fn is None:  # the page's own JavaScript: nothing runs on the server
            continue
        n = len(fn.inputs)
        for label, data, event_data in (("nothing", [None] * n, None),
                                        ("numbers", [7] * n, {"index": "x", "pos": [None], "value": None})):
            kind, value = call_by_fn_index(url, i, fn.queue, data, event_data)
            if kind == "complete":
                continue
            problem = problem_with((kind, value), [])
            if problem:
                problems.append(f"{fn.api_name or getattr(fn.fn, '__name__', '?')} #{i} with {label}: {problem}")
    assert not problems, "\n".join(problems)
    assert demo.manager.require().name == "gutenberg-gpt"
    assert wait_until(lambda: not live_generation_threads())


def test_no_choice_of_the_page_echoes_a_megabyte_back(live_app):
    """Every Radio and Dropdown, as a private event reaches it: a value not among its choices gets a short
    sentence (Gradio's own check quotes the whole value)."""
    import gradio as gr

    choices = [b for b in live_app[0].blocks.values() if isinstance(b, (gr.Radio, gr.Dropdown))
               and not getattr(b, "allow_custom_value", False)]  # such a value reaches the handler's own check
    assert len(choices) >= 5
    for block in choices:
        # as it is, and as Gradio rebuilds it for a session when an event updates it
        for each in (block, block.__class__(**{**block.constructor_args, "render": False})):
            with pytest.raises(gr.Error) as caught:
                each.preprocess(TEXTS["1 MB"])
            message = str(caught.value.message)
            assert 20 < len(message) <= 200, (block.label, message[:300])


def test_prompt_past_the_context_window_keeps_its_end(client):
    text, stats = client.predict(**{**BASELINES["/generate"], "prompt": TEXTS["past the context window"]},
                                 api_name="/generate")
    assert text and "holds the prompt and the new tokens together" in stats
    m = re.search(r"the first (\d+) tokens of the prompt were dropped and the model read the last (\d+)", stats)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) + 4 <= 512


def test_unicode_prompts_come_back_as_valid_text(live_app):
    for label in ("control characters", "lone surrogates", "emoji and CJK", "HTML/JS"):
        kind, out = raw_call(live_app[1], "/generate", [TEXTS[label], 6, 0.8, 0, 0.95, 0.0, 1.1, 0, True, 3])
        assert kind == "complete", (label, out)
        assert isinstance(out[0], str) and out[0], (label, out)
        assert "6 tokens generated" in out[1] or "model ended the text" in out[1], (label, out)
        out[0].encode("utf-8")  # no lone surrogate comes back


def test_choice_errors_do_not_echo_a_megabyte_back(live_app):
    kind, message = raw_call(live_app[1], "/load_model", [TEXTS["1 MB"], "fp32"])
    assert kind == "error" and len(message) <= MAX_MESSAGE


# ----------------------------------------------------------------------------- model safety


@pytest.mark.parametrize("name", [
    "models/gutenberg-gpt", "./models/gutenberg-gpt", "../", "../../etc", "/etc/passwd", "~/.cache/huggingface",
    "openai-community/gpt2", "gutenberg-gpt/../gpt2", "file:///etc/passwd", "https://huggingface.co/gpt2",
    "gutenberg-gpt ", "GUTENBERG-GPT",
])
def test_only_catalogue_names_load_from_the_page(client, live_app, name):
    before = live_app[0].manager.current
    with pytest.raises(AppError, match="Model must be one of"):
        client.predict(name=name, precision="fp32", api_name="/load_model")
    assert live_app[0].manager.current is before


TRUST = re.compile(r"""trust_remote_code['"]?\s*[=:]\s*(?!False\b)""")


def test_trust_remote_code_is_never_enabled():
    assert TRUST.search('x(trust_remote_code=True)') and TRUST.search('{"trust_remote_code": flag}')
    assert not TRUST.search("AutoConfig.from_pretrained(source, trust_remote_code=False)")
    sources = [REPO / "app.py", *(REPO / "demo").rglob("*.py"), *(REPO / "models").rglob("*.py"),
               *(REPO / "benchmarks").rglob("*.py")]
    offenders = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
                 for path in sources for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if TRUST.search(line)]
    assert not offenders, "\n".join(offenders)
    # and no checkpoint folder ships code of its own (auto_map would point transformers at it)
    for config in (REPO / "models").glob("*/config.json"):
        assert "auto_map" not in json.loads(config.read_text()), config
        assert not list(config.parent.glob("*.py")), config.parent


GOOD_SAMPLE = {"settings": {"do_sample": True, "temperature": 0.8, "top_k": 0, "top_p": 0.95, "min_p": 0.0,
                            "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "seed": 21}}


@pytest.mark.parametrize(("data", "index"), [
    (None, 0), ([], 0), ({"samples": "x"}, 0), ({"samples": [GOOD_SAMPLE]}, True), ({"samples": [GOOD_SAMPLE]}, 5),
    ({"samples": [GOOD_SAMPLE]}, "0"), ({"samples": [None], "prompt": TEXT, "max_new_tokens": 8}, 0),
    ({"samples": [{"settings": "x"}], "prompt": TEXT, "max_new_tokens": 8}, 0),
    ({"samples": [{"settings": {**GOOD_SAMPLE["settings"], "temperature": NAN}}], "prompt": TEXT,
      "max_new_tokens": 8}, 0),
    ({"samples": [GOOD_SAMPLE], "prompt": {"a": 1}, "max_new_tokens": 8}, 0),
    ({"samples": [GOOD_SAMPLE], "prompt": TEXT, "max_new_tokens": 10**9}, 0),
], ids=lambda v: repr(v)[:30])
def test_a_rerun_of_hostile_samples_data_gets_a_sentence(data, index):
    """The samples' data comes back from the page (any client can send its own): every malformed part is
    named, never Gradio's bare "Error"."""
    import gradio as gr

    from demo.ui.tabs.samples import SamplesHandlers

    handler = SamplesHandlers(manager=None).rerun_event({"prompt": "p", "max_new_tokens": "m", **{
        n: n for n in GOOD_SAMPLE["settings"]}})
    with pytest.raises(gr.Error) as caught:
        handler(data, gr.EventData(None, {"index": index}))
    assert len(str(caught.value.message)) > 20 and "Traceback" not in str(caught.value.message)


def test_a_rerun_of_good_samples_data_sets_the_generate_tab():
    from demo.ui.tabs.samples import SamplesHandlers

    values = SamplesHandlers.rerun_values({"samples": [GOOD_SAMPLE], "prompt": TEXT, "max_new_tokens": 8}, 0)
    assert values["prompt"] == TEXT and values["max_new_tokens"] == 8 and values["seed"] == 21
    assert values["temperature"] == 0.8 and values["do_sample"] is True


@pytest.mark.parametrize("value", ["abc", None, [], {"a": 1}, NAN, INF, "1e999"])
def test_a_plain_slider_names_itself_in_its_error(value):
    """Layer, Head, Bars to show, Positions: a private event reached with such a value gets a sentence,
    not Gradio's bare "Error" (its own check fails on the comparison)."""
    import gradio as gr

    from demo.ui.inputs import NumberSlider

    with pytest.raises(gr.Error, match="Head must be a (finite )?number"):
        NumberSlider(0, 3, step=1, label="Head").preprocess(value)
    assert NumberSlider(0, 3, step=1, label="Head").preprocess("2") == 2


@pytest.mark.parametrize(("prompt", "output"), [(None, "x"), ("x", 5), ("a" * 40_000, "b" * 20_000), ("", " ")])
def test_the_join_into_an_analysis_tab_checks_its_text(prompt, output):
    """The private event behind "See its attention" / "Explore the next token": any client can send it."""
    import gradio as gr

    from demo.ui.page import _join

    with pytest.raises(gr.Error):
        _join(prompt, output)
    assert _join("Once upon", " a time") == "Once upon a time"
