"""Next-token analysis, step-through, logit lens, branching, rendering and the /next_token API."""

from __future__ import annotations

import math
import socket

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch

from demo.analysis import next_token as nt
from demo.core.cache import ModelCache
from demo.core.sampling import NAMES, PRESETS, SamplingParams, build_processors, validate_sampling
from demo.core.validation import encode_text
from demo.plots import next_token as plots
from demo.plots.next_token import format_note, format_summary
from demo.runtime.generation import generation_record, stream_generate, validate_request
from demo.runtime.pool import ModelManager
from demo.ui.tabs.next_token import NextTokenHandlers, appended_text
from demo.ui.tabs.token_view import TokenViewHandlers

PROMPT = "It was a dark and stormy night, and the"
SETTINGS = [
    PRESETS["Balanced"],
    PRESETS["Focused"],
    PRESETS["Creative"],
    PRESETS["Greedy"],
    SamplingParams(do_sample=True, temperature=1.7, top_k=5, top_p=1.0, min_p=0.0, repetition_penalty=1.3,
                   no_repeat_ngram_size=2),
    SamplingParams(do_sample=True, temperature=0.3, top_k=0, top_p=0.5, min_p=0.1, repetition_penalty=1.0),
]


def as_list(p: SamplingParams) -> list:
    """The tab's input values for these settings (a random seed shows as -1)."""
    return [-1 if name == "seed" and value is None else value for name, value in zip(NAMES, p.values())]


@pytest.fixture(scope="module")
def manager(tiny_spec, tiny_loaded):
    m = ModelManager([tiny_spec], device="cpu")
    m.add(tiny_loaded)  # the session's tiny model, without loading it again
    return m


@pytest.fixture()
def cache():
    return ModelCache(max_entries=8)


def prompt_ids(loaded, text=PROMPT):
    return list(encode_text(loaded.tokenizer, text).ids)


# ----------------------------------------------------------------------------- the distribution


def test_raw_probabilities_are_softmax_of_last_logits(tiny_loaded, cache):
    ids = prompt_ids(tiny_loaded)
    dist = nt.distribution(tiny_loaded, ids, PRESETS["Balanced"], cache)
    with torch.no_grad():
        logits = tiny_loaded.model(torch.tensor([ids])).logits[0, -1].float()
    assert torch.allclose(dist.raw_probs, torch.softmax(logits, -1), atol=1e-6)
    assert dist.raw_probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert dist.probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert dist.vocab_size == len(tiny_loaded.tokenizer)


@pytest.mark.parametrize("params", SETTINGS, ids=lambda p: "-".join(f"{v}" for v in p.values()[1:6]))
def test_after_distribution_is_what_generate_samples_from(tiny_loaded, cache, params):
    ids = prompt_ids(tiny_loaded)
    dist = nt.distribution(tiny_loaded, ids, params, cache)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = tiny_loaded.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=1, do_sample=True,
            temperature=1.0, top_k=0, top_p=1.0, output_scores=True, return_dict_in_generate=True,
            logits_processor=build_processors(params), pad_token_id=tiny_loaded.tokenizer.eos_token_id)
    scores = out.scores[0][0].float()
    assert torch.allclose(torch.softmax(scores, -1), dist.probs, atol=1e-6)
    assert torch.equal(torch.isfinite(scores), dist.kept)
    assert dist.survivors == int(torch.isfinite(scores).sum())
    if params.do_sample and (params.top_k or params.top_p < 1 or params.min_p):
        assert dist.survivors < dist.vocab_size  # the filters did cut something
    assert dist.filters[-1].survivors == dist.survivors if dist.filters else dist.survivors == dist.vocab_size


def test_generation_records_the_same_probabilities(tiny_loaded, cache):
    """The app's own generation path (TokenChooser) drew each token from exactly our 'after' distribution."""
    params = validate_sampling(temperature=1.3, top_k=50, top_p=0.9, repetition_penalty=1.2, seed=7)
    request = validate_request(PROMPT, 6, params)
    final = list(stream_generate(tiny_loaded, request))[-1]
    ids = list(final.prompt_ids)
    assert len(final.chosen) == 6
    for c in final.chosen:
        dist = nt.distribution(tiny_loaded, ids, params, cache)
        assert c.prob == pytest.approx(float(dist.probs[c.token_id]), abs=1e-6)
        top = torch.topk(dist.probs, 5)
        assert [i for i, _ in c.alternatives] == [i for i, q in zip(top.indices.tolist(), top.values.tolist()) if q > 0]
        ids.append(c.token_id)


def test_entropy_survivors_ranks_and_rows(tiny_loaded, cache):
    params = validate_sampling(temperature=0.7, top_k=10, top_p=1.0, repetition_penalty=1.0)
    dist = nt.distribution(tiny_loaded, prompt_ids(tiny_loaded), params, cache)
    p = dist.raw_probs.double()
    assert dist.entropy_before == pytest.approx(float(-(p * p.log2()).sum()), rel=1e-6)
    assert dist.entropy_after < dist.entropy_before
    assert dist.survivors == 10
    data = dist.as_dict(tiny_loaded, 15)
    rows = data["rows"]
    assert [r["rank"] for r in rows] == list(range(1, 16))  # no penalty: exactly the raw top 15
    assert [r["kept"] for r in rows] == [True] * 10 + [False] * 5
    assert all(r["prob"] == 0 and r["rank_after"] is None for r in rows[10:])
    assert [r["rank_after"] for r in rows[:10]] == list(range(1, 11))
    assert rows[0]["id"] == int(dist.raw_probs.argmax()) == data["most_likely"]["id"]
    assert all(r["token"] and isinstance(r["text"], str) for r in rows)
    assert data["survivors"] == 10 and data["vocab_size"] == dist.vocab_size
    assert [s["name"] for s in data["filters"]] == ["temperature", "top-k"]
    assert "Top-k 10" in format_note(data, 3) and "10 most likely" in format_note(data, 3)


def test_penalty_can_promote_tokens_into_the_rows(tiny_loaded, cache):
    ids = prompt_ids(tiny_loaded, "the the the the the the the the")
    params = validate_sampling(temperature=1.0, top_p=1.0, repetition_penalty=10.0)
    dist = nt.distribution(tiny_loaded, ids, params, cache)
    rows = dist.rows(tiny_loaded, 5)
    after_top = torch.topk(dist.probs, 5).indices.tolist()
    assert set(after_top) <= {r.id for r in rows}
    assert {r.rank for r in rows} >= {1, 2, 3, 4, 5}


def test_lookup(tiny_loaded, cache):
    dist = nt.distribution(tiny_loaded, prompt_ids(tiny_loaded), PRESETS["Balanced"], cache)
    found = nt.lookup(tiny_loaded, dist, "night")
    assert [f["query"] for f in found] == ["night", " night"]
    for f in found:
        first = tiny_loaded.tokenizer(f["query"], add_special_tokens=False)["input_ids"][0]
        assert f["id"] == first and f["raw_prob"] == pytest.approx(float(dist.raw_probs[first]))
        assert f["n_tokens"] == len(f["pieces"]) >= 1
    assert nt.lookup(tiny_loaded, dist, "␣night")[0]["query"] == " night"
    assert nt.lookup(tiny_loaded, dist, " ")[0]["query"] == " "  # a space is a token too


def test_long_text_keeps_the_last_context_tokens(tiny_loaded, cache):
    text = "word " * 400  # > 128 tokens, the tiny model's context
    ids = prompt_ids(tiny_loaded, text)
    dist = nt.distribution(tiny_loaded, ids, PRESETS["Balanced"], cache)
    assert len(dist.window_ids) == tiny_loaded.context_length == 128
    assert dist.dropped == len(ids) - 128 and dist.window_ids == ids[-128:]
    data = dist.as_dict(tiny_loaded)
    assert "dropped" in format_summary(data, tiny_loaded.context_length)


# ----------------------------------------------------------------------------- cache


def test_cache_reuses_logits_and_is_bounded(tiny_loaded):
    cache = ModelCache(max_entries=2)
    calls = []
    handle = tiny_loaded.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        ids = prompt_ids(tiny_loaded)
        for p in SETTINGS:
            nt.distribution(tiny_loaded, ids, p, cache)
        assert len(calls) == 1 and cache.hits == len(SETTINGS) - 1
        nt.distribution(tiny_loaded, ids[:-1], PRESETS["Balanced"], cache)
        nt.distribution(tiny_loaded, ids[:-2], PRESETS["Balanced"], cache)
        assert len(cache) == 2 and len(calls) == 3
        nt.distribution(tiny_loaded, ids, PRESETS["Balanced"], cache)  # evicted: runs again
        assert len(calls) == 4
    finally:
        handle.remove()


def test_slider_refresh_does_not_rerun_the_model(manager, tiny_loaded, cache):
    h = NextTokenHandlers(manager, cache)
    calls = []
    handle = tiny_loaded.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        state = None
        for p in SETTINGS:
            out = h.refresh(PROMPT, state, 20, "", *as_list(p))
            state = out[1]
        assert len(calls) == 1
    finally:
        handle.remove()
    assert state["text"] == PROMPT and state["ids"] == prompt_ids(tiny_loaded)


# ----------------------------------------------------------------------------- step-through


def test_greedy_step_through_reproduces_greedy_generation(tiny_loaded, cache):
    params = PRESETS["Greedy"]
    request = validate_request(PROMPT, 12, params)
    final = list(stream_generate(tiny_loaded, request))[-1]
    generated = [c.token_id for c in final.chosen]
    ids = prompt_ids(tiny_loaded)
    for _ in range(12):
        ids.append(nt.append_token(tiny_loaded, ids, params, "most likely", cache=cache).token_id)
    assert ids[len(ids) - 12:] == generated
    assert PROMPT + final.text == tiny_loaded.decode(ids)


def test_sampled_step_is_reproducible(tiny_loaded, cache):
    params = validate_sampling(temperature=1.5, top_p=1.0, repetition_penalty=1.0, seed=1234)
    ids = prompt_ids(tiny_loaded)
    a = nt.append_token(tiny_loaded, ids, params, "sampled", cache=cache)
    b = nt.append_token(tiny_loaded, ids, params, "sampled", cache=ModelCache())
    assert (a.token_id, a.seed, a.position) == (b.token_id, 1234, len(ids))
    dist = nt.distribution(tiny_loaded, ids, params, cache)
    assert a.prob == pytest.approx(float(dist.probs[a.token_id])) and a.prob > 0
    draws = {nt.append_token(tiny_loaded, ids, validate_sampling(temperature=1.5, top_p=1.0, seed=s), "sampled",
                          cache=cache).token_id for s in range(12)}
    assert len(draws) > 1  # different seeds, different draws (a near-uniform random model)
    random_seed = nt.append_token(tiny_loaded, ids, validate_sampling(seed=-1), "sampled", cache=cache)
    assert random_seed.seed is not None  # reported, so the step can be repeated
    greedy = nt.append_token(tiny_loaded, ids, PRESETS["Greedy"], "sampled", cache=cache)
    assert greedy.mode == "most likely" and greedy.token_id == int(dist.raw_probs.argmax())


def test_step_through_handlers_and_undo(manager, tiny_loaded, cache):
    h = NextTokenHandlers(manager, cache)
    balanced = as_list(PRESETS["Balanced"])
    out = h.refresh(PROMPT, None, 10, "", *balanced)
    state = out[1]
    out = h.append("most likely", PROMPT, state, 10, "", None, *balanced)
    text1, state1 = out[0], out[1]
    assert text1.startswith(PROMPT) and len(state1["ids"]) == len(state["ids"]) + 1
    assert "Appended the most likely token" in out[-1]
    chosen = out[6]  # the choose dropdown holds the new rows
    some_id = chosen.choices[3][1]
    out = h.append("chosen", text1, state1, 10, "", some_id, *balanced)
    assert out[1]["ids"][-1] == some_id
    sampled = as_list(validate_sampling(seed=99))
    s1 = h.append("sampled", out[0], out[1], 10, "", None, *sampled)
    s2 = h.append("sampled", out[0], out[1], 10, "", None, *sampled)
    assert s1[0] == s2[0] and "seed 99" in s1[-1]
    back = h.undo(s1[0], s1[1], 10, "", *balanced)
    assert back[0] == out[0] and back[1]["ids"] == out[1]["ids"]
    back = h.undo(back[0], back[1], 10, "", *balanced)
    back = h.undo(back[0], back[1], 10, "", *balanced)
    assert back[0] == PROMPT and not back[1]["history"]
    with pytest.raises(gr.Error, match="nothing to undo"):
        h.undo(back[0], back[1], 10, "", *balanced)
    with pytest.raises(gr.Error, match="choose a token"):
        h.append("chosen", PROMPT, None, 10, "", None, *balanced)


def test_steps_join_characters_split_over_byte_tokens(manager, tiny_loaded, cache):
    h = NextTokenHandlers(manager, cache)
    emoji_ids = tiny_loaded.tokenizer(" 😀", add_special_tokens=False)["input_ids"]
    assert len(emoji_ids) > 1
    text, state = PROMPT, None
    for t in emoji_ids:
        out = h.append("chosen", text, state, 5, "", t, *as_list(PRESETS["Balanced"]))
        text, state = out[0], out[1]
    assert text == PROMPT + " 😀" and state["ids"][-len(emoji_ids):] == emoji_ids
    assert appended_text(tiny_loaded, "x", [0], 5).startswith("x")


def test_lookup_feeds_the_choose_list(manager, cache):
    h = NextTokenHandlers(manager, cache)
    out = h.refresh(PROMPT, None, 10, "night", *as_list(PRESETS["Balanced"]))
    dropdown, lookup_md = out[6], out[7]
    assert dropdown.choices[0][0].startswith("look-up:") and dropdown.value is not None
    assert "night" in lookup_md
    with pytest.raises(gr.Error, match="the token to look up is too long"):
        h.refresh(PROMPT, None, 10, "x" * 201, *as_list(PRESETS["Balanced"]))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("text, top_n, settings, message", [
    ("", 10, as_list(PRESETS["Balanced"]), "empty"),
    ("   ", 10, as_list(PRESETS["Balanced"]), "empty"),
    (None, 10, as_list(PRESETS["Balanced"]), "must be text"),
    ("x" * 60_000, 10, as_list(PRESETS["Balanced"]), "too long"),
    (PROMPT, "many", as_list(PRESETS["Balanced"]), "number of bars"),
    (PROMPT, 0, as_list(PRESETS["Balanced"]), "number of bars"),
    (PROMPT, 10, [True, float("nan"), 0, 0.9, 0, 1.1, 0, -1], "temperature"),
    (PROMPT, 10, [True, 0.8, -3, 0.9, 0, 1.1, 0, -1], "top_k"),
    (PROMPT, 10, [True, 0.8, 0, 1.5, 0, 1.1, 0, -1], "top_p"),
    (PROMPT, 10, [True, 0.8, 0, 0.9, 0, [1], 0, -1], "repetition_penalty"),
    (PROMPT, 10, ["maybe", 0.8, 0, 0.9, 0, 1.1, 0, -1], "do_sample"),
])
def test_bad_inputs_give_clear_errors(manager, cache, text, top_n, settings, message):
    h = NextTokenHandlers(manager, cache)
    with pytest.raises(gr.Error, match=message):
        h.refresh(text, None, top_n, "", *settings)


def test_bad_step_inputs(manager, cache):
    h = NextTokenHandlers(manager, cache)
    balanced = as_list(PRESETS["Balanced"])
    with pytest.raises(gr.Error, match="token id"):
        h.append("chosen", PROMPT, None, 10, "", 10**9, *balanced)
    with pytest.raises(gr.Error, match="token id"):
        h.append("chosen", PROMPT, None, 10, "", "abc", *balanced)
    with pytest.raises(gr.Error, match="append mode must be one of"):
        h.append("telepathy", PROMPT, None, 10, "", None, *balanced)


def test_no_model_loaded_is_a_clear_error(tiny_spec):
    h = NextTokenHandlers(ModelManager([tiny_spec], device="cpu"))
    with pytest.raises(gr.Error, match="No model is loaded"):
        h.refresh(PROMPT, None, 10, "", *as_list(PRESETS["Balanced"]))


# ----------------------------------------------------------------------------- logit lens


def test_logit_lens_last_layer_is_the_models_prediction(tiny_loaded):
    ids = prompt_ids(tiny_loaded)
    lens = nt.logit_lens(tiny_loaded, ids, max_positions=6)
    n_layer = tiny_loaded.model.config.n_layer
    assert lens.layers == ["embeddings"] + [f"layer {i + 1}" for i in range(n_layer)]
    assert lens.positions == list(range(len(ids) - 6, len(ids)))
    with torch.no_grad():
        probs = torch.softmax(tiny_loaded.model(torch.tensor([ids])).logits[0, -6:].float(), -1)
    assert lens.top_ids[-1] == probs.argmax(-1).tolist()
    assert lens.top_probs[-1] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)
    assert lens.final_probs_of_top[-1] == pytest.approx(lens.top_probs[-1], abs=1e-6)
    assert lens.next_tokens[-1] is None and lens.next_tokens[0] == lens.input_tokens[1]
    for row in lens.top_probs:
        assert all(0 < p <= 1 for p in row)
    fig = plots.lens_figure(lens.as_dict())
    assert fig.data[0].zmin == 0 and len(fig.data[0].z) == n_layer + 1
    go.Figure(fig.to_dict())  # valid


def test_logit_lens_reads_its_own_forward_pass_while_other_requests_run_the_model(tiny_loaded):
    """The lens hooks every block of the shared model: another thread's forward pass in the middle of
    the lens's own (another visitor's request, the decode loop) must not reach its readings."""
    import threading

    ids = prompt_ids(tiny_loaded)
    alone = nt.logit_lens(tiny_loaded, ids, max_positions=6)
    lens_thread = threading.get_ident()
    others = []

    def another_request_meanwhile(_module, _inputs):
        if threading.get_ident() == lens_thread and len(others) < 1:
            t = threading.Thread(target=lambda: others.append(
                tiny_loaded.model(torch.tensor([ids[:5]]), use_cache=False).logits.shape))
            t.start()
            t.join()  # a whole forward pass of the model in another thread, inside the lens's

    handle = tiny_loaded.model.transformer.h[0].register_forward_pre_hook(another_request_meanwhile)
    try:
        during = nt.logit_lens(tiny_loaded, ids, max_positions=6)
    finally:
        handle.remove()
    assert others and during.top_tokens == alone.top_tokens and during.top_probs == alone.top_probs


def test_logit_lens_validates_positions(manager, tiny_loaded):
    h = NextTokenHandlers(manager)
    with pytest.raises(gr.Error, match="positions must be in"):
        h.api_logit_lens(PROMPT, 1000)
    with pytest.raises(gr.Error, match="positions must be in"):
        h.lens(PROMPT, None, 0)
    short = nt.logit_lens(tiny_loaded, prompt_ids(tiny_loaded, "Hello"), max_positions=16)
    assert len(short.positions) == len(prompt_ids(tiny_loaded, "Hello"))


# ----------------------------------------------------------------------------- branching


def test_branching_starts_with_the_chosen_prefix(manager, tiny_loaded):
    params = validate_sampling(temperature=1.2, top_p=1.0, seed=5)
    request = validate_request(PROMPT, 8, params)
    final = list(stream_generate(tiny_loaded, request))[-1]
    record = generation_record(manager.require(), PROMPT, final, {**params.as_dict(), "max_new_tokens": 8})
    gen_ids = [t["id"] for t in record["tokens"]]
    pos = 3
    drawn = gen_ids[pos]
    alt = next(a["id"] for a in record["tokens"][pos]["alternatives"] if a["id"] != drawn)
    h = TokenViewHandlers(manager)
    new_prompt, msg = h.branch(record, pos, alt)
    prefix = PROMPT + tiny_loaded.tokenizer.decode(gen_ids[:pos])
    assert (PROMPT + record["text"]).startswith(prefix)  # the cut is where the token was
    assert new_prompt == prefix + tiny_loaded.tokenizer.decode([alt])
    assert "Generate" in msg
    cont = list(stream_generate(tiny_loaded, validate_request(new_prompt, 4, params)))[-1]
    assert (new_prompt + cont.text).startswith(prefix + tiny_loaded.tokenizer.decode([alt]))
    # selection and the view
    pos_value, radio, view, timeline = h.select(record, pos)
    assert pos_value == pos and radio.value == alt and "tok sel" in view
    html_out, dd, *_ = h.on_generation(record)
    assert html_out.count("data-pos=") == len(gen_ids) and len(dd.choices) == len(gen_ids)
    with pytest.raises(gr.Error):
        h.branch(record, 99, alt)
    with pytest.raises(gr.Error):
        h.branch(None, 0, alt)
    with pytest.raises(gr.Error, match="generated by"):
        h.branch({**record, "model": "another"}, 0, alt)


# ----------------------------------------------------------------------------- rendering


def test_bars_figure_starts_at_zero_and_marks_filtered_tokens(tiny_loaded, cache):
    params = validate_sampling(temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0)
    data = nt.distribution(tiny_loaded, prompt_ids(tiny_loaded), params, cache).as_dict(tiny_loaded, 6)
    data["rows"][0]["token"] = "<script>x</script>"
    fig = plots.bars_figure(data)
    assert fig.layout.xaxis.range[0] == 0
    labels = list(fig.data[0].y)
    assert sum("<s>" in lab for lab in labels) == 3
    assert "<script>" not in "".join(labels) and "&lt;script&gt;" in labels[0]
    assert list(fig.data[1].x)[3:] == [0, 0, 0]
    go.Figure(fig.to_dict())  # built without validation for speed: it must still be a valid figure


def test_token_view_html_escapes_tokens():
    record = {"prompt": "<i>p</i>", "tokens": [
        {"id": 1, "label": "<b>", "text": "<b>", "prob": 0.9, "alternatives": [{"id": 1, "label": "<b>", "prob": 0.9}]},
        {"id": 2, "label": "↵", "text": "\n", "prob": 0.01, "alternatives": []},
        {"id": 3, "label": "<0xE2>", "text": "\ufffd", "prob": 0.3, "alternatives": []},
    ]}
    out = plots.token_view_html(record, selected=1)
    assert "<b>" not in out and "<i>" not in out and "&lt;b&gt;" in out
    assert out.count("data-pos=") == 3 and "tok sel" in out and "↵\n" in out and "&lt;0xE2&gt;" in out
    assert plots.prob_color(0.9) != plots.prob_color(0.01)
    assert plots.fmt_prob(0) == "0" and plots.fmt_prob(0.1234) == "12.3%" and plots.fmt_prob(0.00001234) == "0.0012%"


# ----------------------------------------------------------------------------- quantized model


def test_works_with_an_int8_model(tiny_loaded_int8):
    cache = ModelCache()
    ids = prompt_ids(tiny_loaded_int8)
    dist = nt.distribution(tiny_loaded_int8, ids, PRESETS["Balanced"], cache)
    assert dist.raw_probs.sum().item() == pytest.approx(1.0, abs=1e-4)
    lens = nt.logit_lens(tiny_loaded_int8, ids, 4)
    assert lens.top_ids[-1][-1] == int(dist.raw_probs.argmax())


# ----------------------------------------------------------------------------- the API, through the real app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_next_token_api_through_gradio_client(tiny_path, tiny_loaded):
    from gradio_client import Client

    from demo.app_factory import create_app

    demo, launch_kwargs = create_app(model="tiny", extra_models=[f"tiny={tiny_path}"], device="cpu")
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True, **launch_kwargs)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(text=PROMPT, temperature=0.9, top_k=7, top_p=1.0, repetition_penalty=1.0, top_n=12,
                                api_name="/next_token")
        assert isinstance(result, dict) and len(result["rows"]) == 12
        assert result["survivors"] == 7 and result["settings"]["top_k"] == 7
        direct = nt.distribution(demo.manager.current, prompt_ids(demo.manager.current),
                                 validate_sampling(temperature=0.9, top_k=7, top_p=1.0, repetition_penalty=1.0),
                                 ModelCache())
        for row in result["rows"]:
            assert row["raw_prob"] == pytest.approx(float(direct.raw_probs[row["id"]]), abs=1e-6)
            assert row["prob"] == pytest.approx(float(direct.probs[row["id"]]), abs=1e-6)
        assert sum(r["prob"] for r in result["rows"] if r["kept"]) == pytest.approx(1.0, abs=1e-4)
        assert math.isfinite(result["entropy_after_bits"])
        lens = client.predict(text=PROMPT, positions=4, api_name="/logit_lens")
        assert len(lens["positions"]) == 4 and len(lens["layers"]) == 3
        with pytest.raises(Exception, match="temperature"):
            client.predict(text=PROMPT, temperature=-1, api_name="/next_token")
        with pytest.raises(Exception, match="empty"):
            client.predict(text="", api_name="/next_token")
    finally:
        demo.close()


# ----------------------------------------------------------------------------- wiring contract with ui.py


def test_builders_follow_the_ui_contract(manager):
    from demo.core.settings import Settings
    from demo.ui.common import AppContext
    from demo.ui.tabs import generate as generate_tab
    from demo.ui.tabs import next_token as next_token_tab

    ctx = AppContext(manager, ModelCache(), Settings())
    with gr.Blocks():
        with gr.Tab("Generate") as t:
            gen = generate_tab.build(t, ctx)
        with gr.Tab("Next token") as t:
            tab = next_token_tab.build(t, ctx, gen.controls)
    assert isinstance(tab.text, gr.Textbox) and set(NAMES) | {"preset", "max_new_tokens"} == set(gen.controls)
    on_text = tab.on_text
    assert on_text["api_visibility"] == "private" and on_text["inputs"][0] is tab.text
    p = PRESETS["Focused"]
    gen_values = [*as_list(p)[:-1], None, "Focused"]  # the Generate tab's seed box hands over None
    out = on_text["fn"](PROMPT, 10, "", *gen_values)  # {component: value}, every key among the outputs
    outputs = on_text["outputs"]
    assert set(out) == set(outputs)
    settings_out = [out[c] for c in outputs[:len(NAMES) + 1]]
    assert settings_out == gen_values[:-2] + [-1, "Focused"]  # settings copied, seed shown as -1
    state = out[outputs[len(NAMES) + 2]]  # after the settings and the preset: the view's text, then its state
    assert state["text"] == PROMPT and state["history"] == []
    html_out = TokenViewHandlers(manager).on_generation(None)[0]
    assert "Generate some text" in html_out


def test_undo_across_a_hand_edit(manager, tiny_loaded, cache):
    h = NextTokenHandlers(manager, cache)
    balanced = as_list(PRESETS["Balanced"])
    a = h.append("most likely", PROMPT, None, 5, "", None, *balanced)
    edited = a[0] + " and then"
    b = h.append("most likely", edited, a[1], 5, "", None, *balanced)  # the hand edit re-tokenizes
    back = h.undo(b[0], b[1], 5, "", *balanced)
    assert back[0] == edited and back[1]["ids"] == prompt_ids(tiny_loaded, edited)
    back = h.undo(back[0], back[1], 5, "", *balanced)
    assert back[0] == PROMPT and back[1]["ids"] == prompt_ids(tiny_loaded)


def test_the_undo_history_a_session_keeps_is_bounded_in_steps_and_characters(manager, tiny_loaded, cache,
                                                                              monkeypatch):
    """Every session's state stays on the server: a script appending to a long text must not make it large."""
    import demo.ui.tabs.next_token as tab

    monkeypatch.setattr(tab, "MAX_HISTORY_CHARS", 3 * len(PROMPT) + 20)
    h = NextTokenHandlers(manager, cache)
    balanced = as_list(PRESETS["Balanced"])
    out, texts = h.refresh(PROMPT, None, 5, "", *balanced), []
    for _ in range(6):
        texts.append(out[0] if texts else PROMPT)
        out = h.append("most likely", texts[-1], out[1], 5, "", None, *balanced)
    history = out[1]["history"]
    assert [step["text"] for step in history] == texts[-len(history):]  # the latest steps
    assert 1 <= len(history) < 6 and sum(len(step["text"]) for step in history) <= tab.MAX_HISTORY_CHARS
    back = h.undo(out[0], out[1], 5, "", *balanced)
    assert back[0] == texts[-1]
