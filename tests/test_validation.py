"""Server-side validation: every bad value gets a clear message (the API bypasses the sliders)."""

from __future__ import annotations

import math
import re

import pytest

from demo.core.errors import ValidationError
from demo.core.sampling import PRESETS, SETTINGS, SamplingParams, build_processors, validate_sampling
from demo.core.validation import MAX_TEXT_CHARS, check_choice, check_position, check_seed, check_text, encode_text
from demo.runtime.generation import validate_request

GOOD = SamplingParams(seed=1).as_dict()


@pytest.mark.parametrize("name,value,message", [
    ("temperature", 0, "temperature must be in [0.01"),
    ("temperature", 1e-40, "temperature must be in [0.01"),  # would overflow logits / t to inf
    ("temperature", 10**400, "temperature must be a number"),  # float() overflows
    ("temperature", -1, "temperature"),
    ("temperature", 99, "temperature"),
    ("temperature", math.nan, "finite"),
    ("temperature", math.inf, "finite"),
    ("temperature", "hot", "must be a number"),
    ("temperature", None, "must be a number"),
    ("temperature", [1], "must be a number"),
    ("top_k", -1, "top_k"),
    ("top_k", 2.5, "whole number"),
    ("top_k", 10**9, "top_k"),
    ("top_p", 0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("min_p", -0.1, "min_p"),
    ("min_p", 2, "min_p"),
    ("repetition_penalty", 0, "repetition_penalty"),
    ("repetition_penalty", 1e-40, "repetition_penalty must be in [0.01"),
    ("repetition_penalty", 100, "repetition_penalty"),
    ("no_repeat_ngram_size", -3, "no_repeat_ngram_size"),
    ("no_repeat_ngram_size", 1000, "no_repeat_ngram_size"),
    ("do_sample", "maybe", "do_sample"),
    ("do_sample", 7, "do_sample"),
    ("seed", -5, "seed"),
    ("seed", 2**40, "seed"),
    ("seed", 1.5, "whole number"),
    ("seed", 10**400, "seed must be a number"),
    ("seed", math.nan, "finite"),
])
def test_bad_sampling_values_are_rejected_with_a_message(name, value, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        validate_sampling(**{**GOOD, name: value})


def test_good_values_pass_and_strings_of_numbers_are_accepted():
    p = validate_sampling(**{**GOOD, "temperature": "0.7", "top_k": 40.0, "seed": "12", "do_sample": "true"})
    assert (p.temperature, p.top_k, p.seed, p.do_sample) == (0.7, 40, 12, True)
    assert check_seed(-1) is None and check_seed(None) is None and check_seed("") is None


@pytest.mark.parametrize("prompt,message", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    (None, "must be text"),
    (123, "must be text"),
    ("x" * (MAX_TEXT_CHARS + 1), "too long"),
])
def test_bad_prompts(prompt, message):
    with pytest.raises(ValidationError, match=message):
        validate_request(prompt, 10, PRESETS["Greedy"])


@pytest.mark.parametrize("n", [0, -1, 10**6, 2.5, "many", math.nan, None])
def test_bad_max_new_tokens(n):
    with pytest.raises(ValidationError, match="max_new_tokens"):
        validate_request("hello", n, PRESETS["Greedy"])


def test_lone_surrogates_and_control_characters_are_made_safe():
    assert check_text("prompt", "a\ud800b") == "a?b"
    assert check_text("prompt", "tab\tnull\x00 emoji 🙂 東京") == "tab\tnull\x00 emoji 🙂 東京"


def test_processors_follow_generate_order_and_neutral_settings_add_none():
    from transformers import (
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    p = validate_sampling(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                          no_repeat_ngram_size=3)
    assert [type(x) for x in build_processors(p)] == [
        RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper, MinPLogitsWarper]
    neutral = validate_sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    assert len(build_processors(neutral)) == 0
    greedy = validate_sampling(do_sample=False, temperature=0.5, top_k=5, repetition_penalty=1.0)
    assert len(build_processors(greedy)) == 0, "warpers only apply when sampling, as in generate"


def test_every_setting_is_defined_once_and_checked_by_its_definition():
    assert [s.name for s in SETTINGS] == list(SamplingParams.__dataclass_fields__)
    defaults = SamplingParams()
    for s in SETTINGS:
        assert s.label and s.help and getattr(defaults, s.name) == s.default
        assert s.check(s.default) == s.default or (s.kind == "seed" and s.default is None)
        if s.slider:  # the page's slider lies inside what the server accepts
            lo, hi, _ = s.slider
            assert s.lo <= lo < hi <= s.hi, s.name
    with pytest.raises(ValidationError, match="unknown sampling setting"):
        validate_sampling(temprature=0.5)


def test_choices_accept_keys_and_labels_and_quote_little():
    options = {"head": "One head", "heads": "All heads of a layer"}
    assert check_choice("view", "One head", options) == "head" and check_choice("view", "HEADS", options) == "heads"
    assert check_choice("view", None, options, default="head") == "head"
    with pytest.raises(ValidationError, match="view must be one of head, heads") as info:
        check_choice("view", "x" * 1_000_000, options)
    assert len(str(info.value)) < 200
    assert check_position("token", -1, 5) == 4 and check_position("token", None, 5) == 4
    with pytest.raises(ValidationError, match="token must be in"):
        check_position("token", 5, 5)


def test_encode_text_keeps_the_right_end_and_refuses_empty_tokenizations(tiny_loaded):
    tok = tiny_loaded.tokenizer
    ids = tok("one two three four five", add_special_tokens=False)["input_ids"]
    last = encode_text(tok, "one two three four five", limit=2, keep="last")
    first = encode_text(tok, "one two three four five", limit=2, keep="first")
    assert list(last.ids) == ids[-2:] and list(first.ids) == ids[:2]
    assert last.dropped == first.dropped == len(ids) - 2 and last.total == len(ids)
    assert encode_text(tok, "one two").dropped == 0

    class Empty:
        def __call__(self, text, **kw):
            return {"input_ids": []}

    with pytest.raises(ValidationError, match="prompt is empty after tokenization"):
        encode_text(Empty(), "\u200b", name="prompt")
