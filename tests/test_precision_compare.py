"""The cost of 8 bits: fp32 vs int8 of one tiny checkpoint, checked against a direct computation from
both models' own logits and attention; refusals, the cache, the JSON, the figure and the table."""

from __future__ import annotations

import copy
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_checkpoint

from demo.analysis import precision as PC
from demo.analysis.attention import AttentionUnavailable, compute_attention
from demo.core.cache import ModelCache
from demo.core.errors import ValidationError
from demo.core.tokens import display_tokens
from demo.plots import precision as P
from demo.runtime.catalog import ModelSpec
from demo.runtime.loading import LoadedModel, load_model

# Four times the same sentence: long enough that int8 changes the tiny model's top choice somewhere.
TEXT = "It was a dark and stormy night, and the old captain said: It was a dark and stormy night. " * 4


@pytest.fixture(scope="module")
def cmp(tiny_loaded, tiny_loaded_int8) -> PC.PrecisionComparison:
    return PC.compare_precisions(tiny_loaded, tiny_loaded_int8, TEXT)


def logits_of(loaded, ids) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0].float()


def close(got, want, tol=1e-6):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=tol,
                               atol=tol)


# ----------------------------------------------------------------------------- the numbers


def test_kl_top1_and_overlap_equal_a_direct_computation_from_both_models_logits(tiny_loaded, tiny_loaded_int8,
                                                                                 cmp):
    ids = tiny_loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert list(cmp.token_ids) == ids and cmp.n_positions == len(ids) and cmp.truncated == 0
    ref, other = logits_of(tiny_loaded, ids), logits_of(tiny_loaded_int8, ids)
    log_p, log_q = torch.log_softmax(ref.double(), -1), torch.log_softmax(other.double(), -1)
    kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1) / math.log(2)
    explicit = (log_p.exp() * (log_p - log_q)).sum(-1) / math.log(2)
    close(cmp.kl_bits, kl.clamp_min(0))
    close(cmp.kl_bits, explicit.clamp_min(0))
    assert (cmp.kl_bits >= 0).all() and cmp.kl_bits.max() > 0  # 8 bits do change something
    close(cmp.entropy_ref_bits, -(log_p.exp() * log_p).sum(-1) / math.log(2))
    assert cmp.top1_ref.tolist() == ref.argmax(-1).tolist()
    assert cmp.top1_other.tolist() == other.argmax(-1).tolist()
    assert cmp.agree.tolist() == (ref.argmax(-1) == other.argmax(-1)).tolist()
    assert cmp.n_disagree == int((ref.argmax(-1) != other.argmax(-1)).sum())
    n = cmp.top_n
    overlap = [len(set(torch.topk(r, n).indices.tolist()) & set(torch.topk(o, n).indices.tolist())) / n
               for r, o in zip(ref, other)]
    close(cmp.top_overlap, overlap)
    assert cmp.max_kl_bits == pytest.approx(float(kl.max()), rel=1e-6)
    assert cmp.max_kl_position == int(kl.argmax())
    assert cmp.mean_kl_bits == pytest.approx(float(kl.clamp_min(0).mean()), rel=1e-6)
    assert cmp.top1_ref_tokens == tuple(display_tokens(tiny_loaded.tokenizer, ref.argmax(-1).tolist()))
    assert cmp.top1_other_tokens == tuple(display_tokens(tiny_loaded.tokenizer, other.argmax(-1).tolist()))
    assert cmp.next_tokens[:-1] == list(cmp.tokens[1:]) and cmp.next_tokens[-1] is None


def test_a_model_compared_with_itself_differs_in_nothing(tiny_loaded):
    same = PC.compare_precisions(tiny_loaded, tiny_loaded, TEXT)
    assert same.kl_bits.max() <= 1e-9 and same.mean_kl_bits <= 1e-9
    assert same.agree.all() and same.n_disagree == 0
    assert (same.top_overlap == 1).all() and same.mean_top_overlap == 1
    assert (same.attn_max_diff == 0).all() and (same.attn_mean_diff == 0).all()
    assert same.n_layers == tiny_loaded.model.config.n_layer
    assert "changed at 0 of" in PC.summary_line(same) and "overlap 100 %" in PC.summary_line(same)


def test_attention_differences_equal_the_direct_max_and_causal_mean(tiny_loaded, tiny_loaded_int8, cmp):
    a = compute_attention(tiny_loaded, TEXT).weights.astype(np.float64)
    b = compute_attention(tiny_loaded_int8, TEXT).weights.astype(np.float64)
    diff = np.abs(a - b)
    close(cmp.attn_max_diff, diff.max(axis=(1, 2, 3)))
    lower = np.tril(np.ones(diff.shape[-2:], dtype=bool))
    close(cmp.attn_mean_diff, [diff[layer][:, lower].mean() for layer in range(diff.shape[0])])
    assert (cmp.attn_max_diff > 0).all() and (cmp.attn_mean_diff <= cmp.attn_max_diff).all()


def test_a_long_text_is_cut_to_what_both_models_may_analyse(tiny_loaded, tiny_loaded_int8):
    long = PC.compare_precisions(tiny_loaded, tiny_loaded_int8, TEXT * 3)
    assert long.n_positions == long.limit == 128 < long.total_tokens  # the tiny models' context
    assert "only the first 128" in long.notice()
    assert long.as_dict()["truncated_tokens"] == long.total_tokens - 128 and long.as_dict()["limit"] == 128
    assert f"first 128 of the text's {long.total_tokens:,} tokens" in PC.summary_line(long)


# ----------------------------------------------------------------------------- refusals


def test_different_checkpoints_are_refused(tiny_loaded, tmp_path):
    path = make_tiny_checkpoint(tmp_path / "other", seed=1)
    stranger = load_model(ModelSpec("tiny-other", str(path)), "fp32", device="cpu")
    with pytest.raises(ValidationError, match="same model.*'tiny' and 'tiny-other' are different checkpoints"):
        PC.compare_precisions(tiny_loaded, stranger, TEXT)


def test_a_tokenizer_that_splits_the_text_differently_is_refused(tiny_loaded):
    tok = copy.deepcopy(tiny_loaded.tokenizer)
    tok.add_tokens(["stormy"])  # same name, but 'stormy' is now one new token
    twin = LoadedModel(tiny_loaded.spec, tiny_loaded.model, tok, "cpu", "fp32", 0.0)
    with pytest.raises(ValidationError, match="tokenize this text differently"):
        PC.compare_precisions(tiny_loaded, twin, TEXT)
    PC.compare_precisions(tiny_loaded, twin, "The old captain")  # a text both split alike is fine


@pytest.mark.parametrize("text, top_n, match", [("   ", 10, "text is empty"), (42, 10, "text must be text"),
                                                 (TEXT, 0, "top_n must be in"), (TEXT, 2.5, "whole number")],
                         ids=["blank", "not text", "top_n 0", "top_n 2.5"])
def test_bad_requests_are_refused_by_name(tiny_loaded, text, top_n, match):
    with pytest.raises(ValidationError, match=match):
        PC.comparison_of(tiny_loaded, tiny_loaded, text, ModelCache(), top_n=top_n)


def test_a_model_without_attention_weights_is_refused(tiny_loaded, tiny_path):
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="sdpa").eval()
    twin = LoadedModel(tiny_loaded.spec, sdpa, tiny_loaded.tokenizer, "cpu", "fp32", 0.0)
    with pytest.raises(AttentionUnavailable, match="eager attention"):
        PC.compare_precisions(tiny_loaded, twin, TEXT)


# ----------------------------------------------------------------------------- cache


def test_the_cache_returns_the_same_comparison_without_running_the_models_again(tiny_loaded, tiny_loaded_int8,
                                                                                  tiny_spec):
    calls = []

    def counting(*args):
        calls.append(args)
        return PC.compare_precisions(*args)

    cache = ModelCache()
    first = PC.comparison_of(tiny_loaded, tiny_loaded_int8, TEXT, cache, compute=counting)
    again = PC.comparison_of(tiny_loaded, tiny_loaded_int8, TEXT, cache, compute=counting)
    assert again is first and len(calls) == 1 and cache.hits == 1
    PC.comparison_of(tiny_loaded, tiny_loaded_int8, TEXT, cache, top_n=5, compute=counting)
    PC.comparison_of(tiny_loaded, tiny_loaded, TEXT, cache, compute=counting)
    assert len(calls) == 3  # another top_n, another model to compare with: computed anew
    # The int8 model unloaded and loaded again: a new object, never served the old model's comparison.
    reloaded = load_model(tiny_spec, "int8", device="cpu")
    assert PC.comparison_of(tiny_loaded, reloaded, TEXT, cache, compute=counting) is not first
    assert len(calls) == 4
    assert PC.model_serial(reloaded.model) != PC.model_serial(tiny_loaded_int8.model)
    assert PC.model_serial(reloaded.model) == PC.model_serial(reloaded.model)
    assert PC.comparison_of(tiny_loaded, tiny_loaded_int8, TEXT, cache, compute=counting) is first


# ----------------------------------------------------------------------------- JSON, summary, figure, table


def test_as_dict_is_json_and_the_summary_line_gives_the_counts(cmp):
    d = json.loads(json.dumps(cmp.as_dict(), allow_nan=False))
    n = cmp.n_positions
    assert d["n_positions"] == n and d["n_disagree"] == cmp.n_disagree and d["n_layers"] == cmp.n_layers
    assert d["model"] == "tiny" and (d["reference_precision"], d["other_precision"]) == ("fp32", "int8")
    for key in ("tokens", "token_ids", "next_tokens", "kl_bits", "entropy_ref_bits", "top1_ref", "top1_other",
                "top1_ref_tokens", "top1_other_tokens", "agree", "top_overlap"):
        assert len(d[key]) == n, key
    assert len(d["attn_max_diff"]) == len(d["attn_mean_diff"]) == cmp.n_layers
    assert d["kl_bits"][3] == pytest.approx(cmp.kl_bits[3], rel=1e-5)
    assert d["max_kl_after"] == cmp.tokens[cmp.max_kl_position]
    assert d["reference_memory_mb"] > d["other_memory_mb"] > 0 and d["notice"] is None
    assert d["reference_seconds"] > 0 and d["other_seconds"] > 0
    line = PC.summary_line(cmp)
    assert line == PC.summary_line(d)
    assert line.startswith("int8 vs fp32 (tiny): ")
    assert f"the top choice changed at {cmp.n_disagree} of {n} positions" in line
    assert f"after {d['max_kl_after']}" in line and "top-10 overlap" in line and "bits" in line


def test_the_figure_has_the_kl_and_the_attention_panels(cmp):
    data = cmp.as_dict()
    fig = P.figure(data)
    lay = fig.layout
    assert lay.xaxis.title.text.startswith("position") and lay.yaxis.title.text == "KL divergence (bits)"
    assert lay.xaxis2.title.text == "layer" and "attention weight" in lay.yaxis2.title.text
    kl, changed, largest, mean = fig.data
    assert (kl.xaxis, kl.yaxis, largest.xaxis, largest.yaxis) == ("x", "y", "x2", "y2")
    assert len(kl.x) == len(kl.y) == cmp.n_positions
    assert len(changed.x) == cmp.n_disagree and "top choice changed" in changed.name
    assert list(changed.x) == np.flatnonzero(~cmp.agree).tolist()
    assert list(largest.y) == data["attn_max_diff"] and list(mean.y) == data["attn_mean_diff"]
    assert list(largest.x) == list(range(cmp.n_layers))
    assert "<b>%{customdata[0]}</b>" in kl.hovertemplate and "KL" in kl.hovertemplate


def test_changed_top_choices_are_marked_and_token_labels_escaped(cmp):
    data = cmp.as_dict()
    data["agree"] = [i not in (2, 5, 7) for i in range(cmp.n_positions)]
    data["tokens"] = ["<b>x&"] * cmp.n_positions
    fig = P.figure(data)
    assert list(fig.data[1].x) == [2, 5, 7] and list(fig.data[1].y) == [data["kl_bits"][i] for i in (2, 5, 7)]
    assert "3 of" in fig.data[1].name
    assert fig.data[0].customdata[0][0] == "&lt;b&gt;x&amp;"
    assert "<b>x" not in fig.to_json()
    none = P.figure(dict(data, agree=[True] * cmp.n_positions))
    assert len(none.data[1].x) == 0 and "never changed" in none.layout.annotations[0].text
    assert P.figure(dict(data, n_positions=0)).layout.annotations[0].text == "No tokens to compare"


def test_csv_rows_are_the_per_position_table(cmp):
    data = cmp.as_dict()
    rows = P.csv_rows(data)
    assert rows[0] == ["position", "after token", "top1 reference (fp32)", "top1 other (int8)", "agree", "kl_bits",
                       "top10_overlap"]
    assert len(rows) == cmp.n_positions + 1
    i = cmp.max_kl_position
    assert rows[i + 1] == [i, data["tokens"][i], data["top1_ref_tokens"][i], data["top1_other_tokens"][i],
                           data["agree"][i], data["kl_bits"][i], data["top_overlap"][i]]
    assert list(csv.reader(io.StringIO(P.csv_text(data))))[1][0] == "0"


# ----------------------------------------------------------------------------- the tab's handlers


def test_the_handler_loads_the_other_precision_without_changing_the_visitor_model(tiny_spec, tiny_loaded):
    import gradio as gr

    from demo.core.exports import ExportFolder
    from demo.runtime.pool import ModelManager
    from demo.ui.tabs.precision import PrecisionHandlers

    manager = ModelManager([tiny_spec], device="cpu")
    manager.add(tiny_loaded)
    h = PrecisionHandlers(manager, ModelCache(), ExportFolder())
    data = h.api_compare(TEXT)
    assert (data["other_precision"], data["reference_precision"]) == ("int8", "fp32")
    assert manager.require().precision == "fp32", "the visitor's model is unchanged"
    assert {(m.name, m.precision) for m in manager.loaded()} == {("tiny", "fp32"), ("tiny", "int8")}
    int8 = next(m for m in manager.loaded() if m.precision == "int8")
    direct = PC.compare_precisions(tiny_loaded, int8, TEXT)
    assert data["n_disagree"] == direct.n_disagree and data["kl_bits"] == pytest.approx(
        [float(x) for x in direct.kl_bits], rel=1e-5, abs=1e-9)
    assert "changed at" in data["summary"]
    summary, fig, memory = h.compare(TEXT)
    assert "changed at" in summary and len(fig.data) >= 3 and "MB" in memory
    paths = h.export(TEXT)
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["csv", "json"]
    # The operator's limit applies: with "loaded only", a precision nobody loaded is refused clearly.
    strict = ModelManager([tiny_spec], device="cpu", visitor_models="loaded")
    strict.add(tiny_loaded)
    with pytest.raises(gr.Error, match="lets visitors choose only"):
        PrecisionHandlers(strict, ModelCache(), ExportFolder()).api_compare(TEXT)
    with pytest.raises(gr.Error, match="text"):
        h.api_compare("")
