"""Server-side validation: every bad value gets a clear message (the API bypasses the sliders)."""

from __future__ import annotations

import math
import re

import pytest

from demo.backend import MAX_PROMPT_CHARS, clean_text, validate_request
from demo.errors import ValidationError
from demo.sampling import PRESETS, build_processors, check_seed, validate_sampling

GOOD = dict(do_sample=True, temperature=0.8, top_k=0, top_p=0.95, min_p=0.0, repetition_penalty=1.1,
            no_repeat_ngram_size=0, seed=1)


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
    ("x" * (MAX_PROMPT_CHARS + 1), "too long"),
])
def test_bad_prompts(prompt, message):
    with pytest.raises(ValidationError, match=message):
        validate_request(prompt, 10, PRESETS["Greedy"])


@pytest.mark.parametrize("n", [0, -1, 10**6, 2.5, "many", math.nan, None])
def test_bad_max_new_tokens(n):
    with pytest.raises(ValidationError, match="max_new_tokens"):
        validate_request("hello", n, PRESETS["Greedy"])


def test_lone_surrogates_and_control_characters_are_made_safe():
    assert clean_text("prompt", "a\ud800b") == "a?b"
    assert clean_text("prompt", "tab\tnull\x00 emoji 🙂 東京") == "tab\tnull\x00 emoji 🙂 東京"


def test_processors_follow_generate_order_and_neutral_settings_add_none():
    from transformers import (MinPLogitsWarper, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    p = validate_sampling(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                          no_repeat_ngram_size=3)
    assert [type(x) for x in build_processors(p)] == [
        RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper, MinPLogitsWarper]
    neutral = validate_sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    assert len(build_processors(neutral)) == 0
    greedy = validate_sampling(do_sample=False, temperature=0.5, top_k=5, repetition_penalty=1.0)
    assert len(build_processors(greedy)) == 0, "warpers only apply when sampling, as in generate"
