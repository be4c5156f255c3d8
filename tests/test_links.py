"""Links that restore a lesson (demo.core.links): what a link may set, how each value is checked, and that
a link the page makes reads back to the same state; and the QR codes of a link (demo.plots.qr)."""

from __future__ import annotations

import pytest

from demo.core.errors import ValidationError
from demo.core.links import MAX_LINK_CHARS, link_request, make_link, read_link, reproducing
from demo.core.settings import PRECISIONS
from demo.plots.qr import MAX_QR_BYTES, qr_codes_html

MODELS = ["gutenberg-gpt", "gpt2"]


def read(fragment: str):
    return read_link(fragment, MODELS, list(PRECISIONS))


def test_a_link_the_page_makes_reads_back_to_the_same_state():
    settings = {"max_new_tokens": 30, "do_sample": True, "temperature": 1.3, "top_k": 0, "top_p": 0.9, "min_p": 0.05,
                "repetition_penalty": 1.1, "no_repeat_ngram_size": 2, "seed": 42}
    fragment, shortened = make_link(
        "gutenberg-gpt", "fp32", "attention", "Once & for <all> #1?", settings, text="The cat sat on the mat.",
        attention={"view": "token", "layer": 2, "head": 1, "token": 5, "aggregate": "mean-heads", "scope": "all"})
    assert shortened == []
    state = read(fragment)
    assert state.problems == []
    assert (state.model, state.precision, state.tab) == ("gutenberg-gpt", "fp32", "attention")
    assert state.prompt == "Once & for <all> #1?" and state.text == "The cat sat on the mat."
    assert state.settings == settings
    assert state.attention == {"view": "token", "layer": 2, "head": 1, "token": 5, "aggregate": "mean-heads",
                               "scope": "all"}
    assert read("#" + fragment).settings == settings
    assert read(make_link("gpt2", "int8", "generate", "Hi", {**settings, "seed": None})[0]).settings["seed"] is None


@pytest.mark.parametrize(("fragment", "words"), [
    ("temperature=NaN", "temperature must be a finite number"),
    ("temperature=9", "temperature must be in [0.05, 2]"),  # what the page's slider accepts
    ("top_k=1.5", "top_k must be a whole number"),
    ("seed=abc", "seed must be"),
    ("do_sample=maybe", "do_sample"),
    ("model=../../etc/passwd", "model must be one of"),
    ("precision=fp64", "precision must be one of"),
    ("tab=admin", "tab must be one of"),
    ("view=everything", "view must be one of"),
    ("layer=-1", "layer must be in"),
    ("prompt=", "prompt is empty"),
    ("prompt=" + "a" * 5000, "prompt is too long"),
    ("what=1", "'what' is not something a link can set"),
    ("seed=1&seed=2", "seed is given twice"),
])
def test_each_bad_value_is_left_out_and_named(fragment, words):
    state = read(fragment)
    assert any(words in p for p in state.problems), state.problems
    assert all(len(p) < 300 for p in state.problems), "a bad value is quoted short"


def test_too_long_or_too_many_values_are_refused_whole():
    assert "too long" in read("prompt=" + "a" * MAX_LINK_CHARS).problems[0]
    many = "&".join(f"k{i}=1" for i in range(100))
    assert "more than" in read(many).problems[0]
    assert read("").empty and read("#").empty and read(None).empty


@pytest.mark.parametrize("alphabet", ["a", "北", "ж"])
def test_a_long_prompt_keeps_its_end_and_the_link_is_always_read_back(alphabet):
    prompt, text = "start " + alphabet * 6000 + " end", alphabet * 5000
    fragment, shortened = make_link("gutenberg-gpt", "fp32", "next_token", prompt, {"seed": 1}, text=text)
    assert len(fragment) <= MAX_LINK_CHARS and len(shortened) == 2
    state = read(fragment)
    assert state.problems == [] and prompt.endswith(state.prompt) and state.prompt.endswith(" end")
    assert text.endswith(state.text)


def test_blank_texts_stay_out_of_a_link():
    fragment, _ = make_link("gutenberg-gpt", "fp32", "generate", "  ", {}, text="")
    state = read(fragment)
    assert state.problems == [] and state.prompt is None and state.text is None


def test_what_a_link_held_is_shown_as_plain_text_in_the_notice():
    from demo.ui.share import describe

    state = read("%5BSign+in+again%5D%28https%3A%2F%2Fev.il%2Fx%29=1&%21%5B%5D%28https%3A%2F%2Ft%2Fp.png%29=2")
    notice = describe({"tab": None, "problems": state.problems})
    assert "](" not in notice.replace("\\](", "").replace("\\]\\(", "") and "\\[Sign in again\\]" in notice
    assert "\\!\\[\\]" in notice


def test_a_bare_address_or_email_in_a_link_is_not_turned_into_a_link():
    from demo.ui.share import describe

    state = read("https://1249763399/reset-password=1&admin@evil.example=2")
    notice = describe({"tab": None, "problems": state.problems})
    assert "https\\://1249763399" in notice and "admin\\@evil" in notice
    assert "https://" not in notice and "admin@" not in notice


RECORD = {"model": "gutenberg-gpt", "precision": "fp32", "prompt": "Once", "text": " upon a time",
          "settings": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.9, "min_p": 0.0,
                       "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "seed": 977, "max_new_tokens": 40},
          "tokens": [{"id": 1}, {"id": 2}, {"id": 3}]}


def test_a_link_after_a_generation_carries_its_seed_and_its_text():
    settings, text = reproducing(RECORD, "gutenberg-gpt", "fp32", "Once")
    assert settings["seed"] == 977 and text == " upon a time"
    assert settings["max_new_tokens"] == 3, "a text cut short is made again to the same length"
    fragment, _ = make_link("gutenberg-gpt", "fp32", "generate", "Once", {"seed": None, **settings}, output=text)
    state = read(fragment)
    assert state.problems == [] and state.output == " upon a time" and state.settings["seed"] == 977
    request = link_request(state, "generate")
    assert request["output"] and request["seed"] == 977
    # another prompt, model or precision than the generation's: the page's own settings
    assert reproducing(RECORD, "gutenberg-gpt", "fp32", "Twice") is None
    assert reproducing(RECORD, "gpt2", "fp32", "Once") is None
    assert reproducing(RECORD, "gutenberg-gpt", "int8", "Once") is None
    assert reproducing(None, "gutenberg-gpt", "fp32", "Once") is None
    assert reproducing({**RECORD, "tokens": []}, "gutenberg-gpt", "fp32", "Once")[0]["max_new_tokens"] == 40


def test_the_notice_says_whether_generate_gives_the_same_text():
    from demo.ui.share import describe

    made = describe({"tab": "generate", "output": True, "seed": 977, "problems": []})
    assert "the one the link was made from" in made and "(977)" in made
    fixed = describe({"tab": "generate", "output": False, "seed": 5, "problems": []})
    assert "give the same text" in fixed and "(5)" in fixed
    random = describe({"tab": "generate", "output": False, "seed": None, "problems": []})
    assert "random" in random and "same text" not in random


# ----------------------------------------------------------------------------- QR codes for a class


def test_qr_codes_of_a_link_and_of_the_page_with_the_addresses_escaped():
    url = "https://example.org/app/?x=<b>#m=gutenberg-gpt&p=The%20cat"
    out = qr_codes_html(url)
    assert out.count("<svg") == 2 and "This view (the link)" in out and "The page" in out
    assert "&lt;b&gt;" in out and "<b>#" not in out  # the addresses are text, not HTML
    assert "only on this computer" not in out


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "[::1]", "127.0.1.1"])
def test_an_address_only_this_computer_reaches_is_named(host):
    assert "only on this computer" in qr_codes_html(f"http://{host}:7860/#m=x")


@pytest.mark.parametrize("host", ["192.168.1.20", "example.hf.space", "10.0.0.5"])
def test_a_network_address_gets_no_warning(host):
    assert "only on this computer" not in qr_codes_html(f"http://{host}:7860/#m=x")


def test_a_link_too_long_to_scan_gets_only_the_page_code():
    url = "https://example.org/#p=" + "a" * (MAX_QR_BYTES + 10)
    out = qr_codes_html(url)
    assert out.count("<svg") == 1 and "too long to scan" in out


@pytest.mark.parametrize("bad", [None, 12, "", "   ", "javascript:alert(1)", "file:///etc/passwd", "ftp://x.org/",
                                 "http://", "https://x.org/#" + "a" * 50_000, "http://[::1/x", "https://[zz]/"])
def test_anything_but_an_http_address_is_refused_with_a_message(bad):
    with pytest.raises(ValidationError):
        qr_codes_html(bad)


def test_a_lone_surrogate_in_a_link_becomes_a_question_mark_and_the_answer_is_valid_utf8():
    import json

    from demo.ui.share import describe

    state = read("\ud800=1&prompt=a\udc00b&seed=%ED%A0%80")
    assert state.prompt == "a?b"
    notice = describe({"tab": "generate", "problems": state.problems})
    json.dumps([notice, state.prompt], ensure_ascii=False).encode("utf-8")  # what Gradio sends back
    assert "is not something a link can set" in notice and "seed must be" in notice


def test_a_lone_surrogate_in_a_copied_link_or_its_qr_code_becomes_a_question_mark():
    """The page's texts reach "Copy a link" as they are (any client can send its own): no encoder takes a
    lone surrogate, so it is made a '?' as everywhere else."""
    fragment, _ = make_link("gutenberg-gpt", "fp32", "attention", "a\ud800b", {}, text="c\udfffd", output="e\ud801")
    assert read(fragment).prompt == "a?b" and "text=c%3Fd" in fragment
    out = qr_codes_html("http://192.168.1.20:7860/#p=x\ud800y")
    assert out.count("<svg") == 2
