"""Attention tab: extraction (against a manual computation), cache, views, validation, /attention API."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from demo.analysis import attention as A
from demo.analysis.attention import AttentionView
from demo.core.cache import ModelCache
from demo.plots import attention as P
from demo.ui.tabs.attention import AttentionHandlers

TEXT = "It was a dark and stormy night, and the old captain said: It was a dark and stormy night."


class FakeManager:
    """The bit of backend.ModelManager the tab uses."""

    def __init__(self, loaded):
        self.current = loaded

    def require(self, session=None):
        return self.current


@pytest.fixture
def cache():
    return ModelCache()


@pytest.fixture
def handlers(tiny_loaded, cache) -> AttentionHandlers:
    return AttentionHandlers(FakeManager(tiny_loaded), cache)


def view(**kw) -> AttentionView:
    return AttentionView(**kw)


def fake_result(n_layers=2, n_heads=3, t=40, seed=0) -> A.AttentionResult:
    rng = np.random.default_rng(seed)
    w = np.tril(rng.random((n_layers, n_heads, t, t))).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    w.setflags(write=False)
    return A.AttentionResult("fake", "fp32", "x", tuple(range(t)), tuple(f"␣w{i % 7}" for i in range(t)), w, t,
                             1024, 0.0)


def manual_attention(loaded, text) -> np.ndarray:
    """softmax(Q K^T / sqrt(d) + causal mask) from each layer's own c_attn projection, [L, H, T, T]."""
    model = loaded.model
    cfg = model.config
    ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
    inputs = []  # the hidden states entering each attention block (output of ln_1)
    hooks = [block.ln_1.register_forward_hook(lambda m, i, o: inputs.append(o.detach()))
             for block in model.transformer.h]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hk in hooks:
            hk.remove()
    out = []
    n_head, d = cfg.n_head, cfg.n_embd // cfg.n_head
    for block, h in zip(model.transformer.h, inputs):
        with torch.no_grad():
            q, k, _ = block.attn.c_attn(h).split(cfg.n_embd, dim=2)
        q = q.view(1, -1, n_head, d).transpose(1, 2).double()
        k = k.view(1, -1, n_head, d).transpose(1, 2).double()
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        t = scores.shape[-1]
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        scores = scores.masked_fill(~causal, float("-inf"))
        out.append(torch.softmax(scores, dim=-1)[0].numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------- extraction


def test_weights_equal_manual_computation(tiny_loaded):
    r = A.compute_attention(tiny_loaded, TEXT)
    cfg = tiny_loaded.model.config
    assert r.weights.shape == (cfg.n_layer, cfg.n_head, r.n_tokens, r.n_tokens)
    assert r.weights.dtype == np.float32
    np.testing.assert_allclose(r.weights, manual_attention(tiny_loaded, TEXT), atol=1e-5, rtol=0)


def test_rows_sum_to_one_and_upper_triangle_is_zero(tiny_loaded):
    w = A.compute_attention(tiny_loaded, TEXT).weights
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    iu = np.triu_indices(w.shape[-1], 1)
    assert np.all(w[..., iu[0], iu[1]] == 0)
    assert np.all(w >= 0)


def test_int8_weights_close_to_fp32(tiny_loaded, tiny_loaded_int8):
    w32 = A.compute_attention(tiny_loaded, TEXT).weights
    w8 = A.compute_attention(tiny_loaded_int8, TEXT).weights
    assert w8.shape == w32.shape and w8.dtype == np.float32
    np.testing.assert_allclose(w8, w32, atol=2e-3)
    np.testing.assert_allclose(w8.sum(-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("text", [TEXT, "  two  spaces,\nnew line\tand tab", "café — “quoted” 😀 ünïcödé\n\n"])
def test_token_labels_round_trip(tiny_loaded, text):
    r = A.compute_attention(tiny_loaded, text)
    assert A.labels_to_text(r.tokens) == text
    assert all(t and t.isprintable() for t in r.tokens)  # nothing invisible in a label
    assert " " not in "".join(r.tokens)  # leading spaces are made visible
    assert tiny_loaded.tokenizer.decode(list(r.token_ids)) == text


def test_long_text_is_cut_at_the_context_with_a_notice(tiny_loaded):
    text = "the cat sat on the mat and " * 60  # far more than the tiny model's 128 positions
    r = A.compute_attention(tiny_loaded, text)
    assert r.n_tokens == A.token_limit(tiny_loaded) == 128
    assert r.total_tokens > 128 and r.truncated == r.total_tokens - 128
    assert "first 128" in r.notice()


def test_memory_budget_limits_tokens():
    class Loaded:  # a GPT-2-small-sized model: 12 layers x 12 heads, 1024 positions
        context_length, n_layers, n_heads = 1024, 12, 12

    n = A.token_limit(Loaded())
    assert n < 1024 and 12 * 12 * n * n * 4 <= A.MAX_RESULT_BYTES


# ----------------------------------------------------------------------------- cache


def test_switching_layer_head_view_runs_the_model_once(tiny_loaded, handlers, cache):
    calls = []
    hook = tiny_loaded.model.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = handlers.analyse(TEXT, None, "head", 0, 0, "mean-heads", None, "layer")
        analysed = out.analysed
        for layer in (0, 1):
            for head in range(4):
                handlers.switch(analysed, TEXT, "head", layer, head, "mean-heads", None, "layer")
        for kind in ("heads", "aggregate", "token"):
            handlers.switch(analysed, TEXT, kind, 1, 2, "max-layers", 3, "all")
        handlers.api_attention(TEXT, 1, 3, "head", "mean-heads", -1, "layer")
        handlers.export(analysed, TEXT, "head", 1, 1, "mean-heads", None, "layer")
    finally:
        hook.remove()
    assert len(calls) == 1
    assert cache.misses == 1 and cache.hits >= 10


def test_a_previous_texts_token_sent_with_a_quick_click_fails_only_the_view_that_uses_it(handlers):
    """After Show attention on a shorter text, the page may send the old text's token (30) before the new
    choices reach it: the views that do not use a token draw; the one-token view names the problem."""
    out = handlers.analyse("The cat sat.", None, "head", 0, 0, "mean-heads", None, "layer")
    for kind in ("head", "heads", "aggregate"):
        assert handlers.switch(out.analysed, "The cat sat.", kind, 0, 0, "mean-heads", 30, "layer").plot is not None
    with pytest.raises(gr.Error, match="token"):
        handlers.switch(out.analysed, "The cat sat.", "token", 0, 0, "mean-heads", 30, "layer")


def test_one_view_matrix_feeds_the_figure_the_payload_and_the_export(tiny_loaded, handlers):
    r = A.attention_of(tiny_loaded, TEXT)
    views = [view(kind="head", layer=1, head=3, token=7), view(kind="heads", layer=1, token=4),
             view(kind="token", token=5, scope="all"), view(kind="token", token=6, layer=1)]
    views += [view(kind="aggregate", aggregate=a, layer=1, head=2, token=9) for a in A.AGGREGATES]
    for v in views:
        vm = A.view_matrix(r, v)
        _, text, data = A.export_tables(r, v, 10**7)
        np.testing.assert_allclose(np.array(data["weights"]), vm.values, atol=1e-6)
        if v.kind in ("head", "aggregate"):
            z = np.nan_to_num(np.asarray(P.figure(r, v).data[0].z, dtype=float))
            np.testing.assert_allclose(z, np.tril(vm.values), atol=1e-6)
        if v.kind in ("aggregate", "token"):
            payload = A.api_payload(r, v)
            np.testing.assert_allclose(np.array(payload["view_weights"]), vm.values, atol=1e-6)
        row = A.looking_row(r, v)  # the strip's row: the view's row, averaged over its heads
        whole = vm.values.mean(axis=0) if v.kind == "token" else vm.values[..., v.token, : v.token + 1]
        np.testing.assert_allclose(row, whole.mean(axis=0) if v.kind == "heads" else whole, atol=1e-6)


# ----------------------------------------------------------------------------- aggregates and figures


def test_results_keep_a_gpts_weights_packed_and_exact(tiny_loaded):
    w = np.array(fake_result().weights)  # causal: 0 after the diagonal
    r = A.AttentionResult("fake", "fp32", "x", tuple(range(40)), ("t",) * 40, w, 40, 1024, 0.0)
    assert r.packed and r.n_tokens == 40 and r.nbytes == 2 * 3 * 40 * 41 // 2 * 4  # half of 2 x 3 x 40 x 40 floats
    assert np.array_equal(r.weights, w)  # nothing lost
    assert np.array_equal(r.head(1, 2), w[1, 2]) and np.array_equal(r.layer(0), w[0])
    assert np.array_equal(r.across_layers(1), w[:, 1]) and np.array_equal(r.rows(7), w[:, :, 7, :8])
    leaky = w.copy()
    leaky[0, 0, 3, 5] = 1e-9  # a weight after the diagonal: packing would lose it, so the result keeps all
    whole = A.AttentionResult("fake", "fp32", "x", tuple(range(40)), ("t",) * 40, leaky, 40, 1024, 0.0)
    assert not whole.packed and np.array_equal(whole.weights, leaky) and whole.nbytes == leaky.nbytes
    real = A.compute_attention(tiny_loaded, TEXT)  # a GPT's own weights: packed
    assert real.packed and real.nbytes < real.weights.nbytes * 0.6


def test_aggregates_and_focus():
    r = fake_result()
    w = r.weights
    np.testing.assert_allclose(A.aggregate_matrix(r, "mean-heads", 1), w[1].mean(0), atol=1e-6)
    np.testing.assert_allclose(A.aggregate_matrix(r, "max-layers", 0, 2), w[:, 2].max(0))
    np.testing.assert_allclose(A.aggregate_matrix(r, "mean-all"), w.mean((0, 1)), atol=1e-6)
    rows, labels = A.focus_matrix(r, 5, "all")
    assert rows.shape == (6, 6) and labels[4] == "L1 H1"
    np.testing.assert_allclose(rows[4], w[1, 1, 5, :6])
    last = AttentionView.parse(r, "token", 1, 0, "mean-heads", -1, "layer")
    assert last.token == 39
    vm = A.view_matrix(r, last)
    assert vm.values.shape == (3, 40) and vm.row_labels == ["L1 H0", "L1 H1", "L1 H2"]


def test_pooling_keeps_rows_summing_to_one_and_the_triangle_empty():
    r = fake_result(t=37)
    pooled = A.pool_causal(r.weights[0, 0], 4)
    assert pooled.shape == (10, 10)
    np.testing.assert_allclose(np.nansum(pooled, -1), 1.0, atol=1e-5)
    assert np.isnan(pooled[np.triu_indices(10, 1)]).all() and not np.isnan(np.diag(pooled)).any()


def test_head_figure_is_readable():
    r = fake_result(t=64)
    fig = P.figure(r, view(kind="head", layer=1, head=2))
    tr = fig.data[0]
    z = np.asarray(tr.z, dtype=float)
    assert z.shape == (64, 64)
    assert np.isnan(z[np.triu_indices(64, 1)]).all()  # the empty triangle is drawn as the grey background
    np.testing.assert_allclose(np.nan_to_num(z), r.weights[1, 2], atol=1e-6)
    assert len(set(tr.x)) == 64 and tr.x[5] == "␣w5 (5)" and list(tr.x) == list(tr.y)
    assert "query" in tr.hovertemplate and "key" in tr.hovertemplate and "weight" in tr.hovertemplate
    assert tr.colorbar.title.text == "attention weight"
    assert fig.layout.xaxis.title.text == "token looked at (key)"
    assert fig.layout.yaxis.title.text == "token doing the looking (query)"
    assert fig.layout.plot_bgcolor == P.EMPTY_COLOR
    json.loads(fig.to_json())


@pytest.mark.parametrize("t", [31, 60, 120])
def test_a_heatmap_of_up_to_120_tokens_labels_every_token_on_rows_tall_enough_for_its_labels(t):
    """Readable on a projector: every token labelled (the axis draws every category), 12 px labels, and
    rows at least 12 px tall once the title, the column labels and the margins (~260 px) are set aside."""
    fig = P.figure(fake_result(t=t), view(kind="head", layer=0, head=0))
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.dtick == 1 and axis.type == "category" and axis.tickfont.size >= 12
    assert (fig.layout.height - 260) / t >= 12


def test_token_text_is_escaped_in_every_plot():
    import dataclasses

    tokens = ("<b>", "␣<img␣src=x␣onerror=alert(1)>", "␣%{z}", "␣&amp;") * 5
    r = dataclasses.replace(fake_result(t=len(tokens)), tokens=tokens)
    for kind in ("head", "heads", "aggregate", "token"):
        fig = P.figure(r, view(kind=kind, token=len(tokens) - 1))
        text = json.dumps(fig.to_plotly_json(), ensure_ascii=False)
        assert "<b>" not in text.replace("<b>head", "") and "<img" not in text, kind
        assert "&amp;" not in text.replace("&amp;amp;", ""), kind
        assert "&lt;b&gt;" in text, kind
        for tr in fig.data:  # no token text inside a template, where '%{z}' would be filled in
            assert "%{z}" not in (tr.hovertemplate or "").replace("weight: %{z", ""), kind
    assert "&lt;img" in P.caption(view(kind="token", token=1), r)


def test_long_texts_are_shown_in_blocks_with_a_notice():
    r = fake_result(n_layers=1, n_heads=2, t=300)
    fig = P.figure(r, view(kind="head", layer=0, head=1))
    assert np.asarray(fig.data[0].z).shape == (150, 150)
    assert "150" in fig.data[0].x[-1] or "299" in fig.data[0].x[-1]
    assert "block of 2 tokens" in P.pooling_notice(r, view(kind="head"))
    grid = P.figure(r, view(kind="heads"))
    assert len(grid.data) == 2 and max(np.asarray(t.z).shape[0] for t in grid.data) <= P.GRID_CAP
    assert P.pooling_notice(fake_result(t=64), view(kind="head")) is None


@pytest.mark.parametrize("kind", list(A.VIEWS))
def test_every_view_builds_with_a_caption(kind):
    r = fake_result()
    v = AttentionView.parse(r, kind, 1, 2, "max-heads", 7, "all")
    fig = P.figure(r, v)
    assert fig.data and fig.layout.title.text
    text = P.caption(v, r)
    assert len(text) > 80
    json.loads(fig.to_json())


def test_heads_view_has_one_panel_per_head():
    r = fake_result(n_heads=3, t=12)
    fig = P.figure(r, view(kind="heads", layer=1))
    assert len(fig.data) == 3
    assert [a.text for a in fig.layout.annotations] == ["<b>head 0</b>", "<b>head 1</b>", "<b>head 2</b>"]
    assert fig.layout.coloraxis.colorbar.title.text == "attention weight"


# ----------------------------------------------------------------------------- handlers and validation


def test_api_handler_returns_tokens_and_matrix(tiny_loaded, handlers):
    fig, data = handlers.api_attention(TEXT, 1, 3, "head", "mean-heads", -1, "layer")
    r = A.attention_of(tiny_loaded, TEXT)
    assert data["tokens"] == list(r.tokens) and data["layer"] == 1 and data["head"] == 3
    np.testing.assert_allclose(np.array(data["weights"]), r.weights[1, 3], atol=1e-6)
    json.dumps(data)
    _, data = handlers.api_attention(TEXT, 0, 0, "token", "mean-heads", 4, "all")
    assert len(data["view_weights"]) == 8 and len(data["view_weights"][0]) == 5


BAD = [
    dict(layer=float("nan")), dict(layer="abc"), dict(layer=2), dict(layer=-1), dict(layer=0.5), dict(layer=True),
    dict(layer=None), dict(layer=[1]), dict(head=4), dict(head=float("inf")), dict(view="pie"), dict(view=3),
    dict(aggregate="median-heads"), dict(token=10_000), dict(token="x"), dict(scope="everything"), dict(text=""),
    dict(text="   \n"), dict(text=None), dict(text=123), dict(text="x" * 60_000),
]


@pytest.mark.parametrize("bad", BAD, ids=[next(iter(b)) + "=" + repr(next(iter(b.values())))[:12] for b in BAD])
def test_api_handler_rejects_bad_input_with_a_clear_error(handlers, bad):
    import gradio as gr

    args = dict(text=TEXT, layer=0, head=0, view="head", aggregate="mean-heads", token=-1, scope="layer", **{})
    args.update(bad)
    with pytest.raises(gr.Error) as info:
        handlers.api_attention(*args.values())
    msg = str(info.value)
    assert not msg.startswith("Something went wrong"), msg
    assert next(iter(bad)) in msg


def test_analyse_clamps_stale_controls_and_exports(tiny_loaded, handlers, tmp_path):
    fig, note, notice, strip, layer, head, token, analysed = handlers.analyse(TEXT, None, "heads", 9, 9,
                                                                                "mean-heads", 5, "layer")
    n = A.attention_of(tiny_loaded, TEXT).n_tokens
    assert layer.value == 1 and head.value == 3 and token.value == n - 1  # a new text starts on its last token
    assert handlers.analyse(TEXT, TEXT, "token", 0, 0, "mean-heads", 5, "layer").token.value == 5  # kept
    assert handlers.analyse(TEXT, TEXT, "token", 0, 0, "mean-heads", 999, "layer").token.value == n - 1
    assert analysed == TEXT and "tokens" in notice and "heads" in note.lower()
    for kind in A.VIEWS:
        csv_path, json_path = handlers.export(analysed, TEXT, kind, 1, 2, "max-all", 3, "all")
        data = json.loads(Path(json_path).read_text(encoding="utf-8"))
        assert data["view"] == kind and data["tokens"]
        assert Path(csv_path).read_text(encoding="utf-8").count("\n") >= 4


# ----------------------------------------------------------------------------- the real app and its API


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_path):
    from demo.app_factory import create_app

    demo, launch_kwargs = create_app(model="tiny", precision="fp32", extra_models=[f"tiny={tiny_path}"],
                                     device="cpu")
    assert demo.manager.current is not None
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_kwargs)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_attention_endpoint_through_gradio_client(app_url, tiny_path):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    fig, data = client.predict(TEXT, 1, 2, "head", "mean-heads", -1, "layer", api_name="/attention")
    assert data["layer"] == 1 and data["head"] == 2 and data["model"] == "tiny"
    w = np.array(data["weights"])
    assert w.shape == (len(data["tokens"]),) * 2
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-4)
    assert np.all(w[np.triu_indices(len(w), 1)] == 0)
    assert A.labels_to_text(data["tokens"]) == TEXT
    plot = fig if isinstance(fig, dict) else json.loads(fig)
    figure = json.loads(plot["plot"]) if isinstance(plot.get("plot"), str) else plot
    assert figure["data"][0]["type"] == "heatmap"

    with pytest.raises(Exception, match="layer must be in"):
        client.predict(TEXT, 7, 0, "head", "mean-heads", -1, "layer", api_name="/attention")
    with pytest.raises(Exception, match="text is empty"):
        client.predict("  ", 0, 0, "head", "mean-heads", -1, "layer", api_name="/attention")
    with pytest.raises(Exception, match="head must be"):
        client.predict(TEXT, 0, "two", "head", "mean-heads", -1, "layer", api_name="/attention")


def test_the_notice_does_not_tell_whether_the_text_was_in_the_shared_cache(handlers):
    """The cache is shared by every visitor: a notice that said "from the cache" would tell a visitor that
    somebody else had analysed this text."""
    text = "A text nobody analysed before this test."
    first = handlers.analyse(text, None, "head", 0, 0, "mean-heads", None, "layer").notice
    again = handlers.analyse(text, None, "head", 0, 0, "mean-heads", None, "layer").notice
    assert first == again and "computed in" in first and "cache" not in first.lower()


def test_a_view_out_of_range_does_not_tell_whether_another_visitors_text_is_in_the_cache(handlers):
    """The private switch event sent by a session that analysed nothing, with out-of-range layers: the
    same message whether the text was analysed by somebody else or not."""
    seen, unseen = "A text somebody else analysed.", "A text nobody analysed, ever."
    handlers.analyse(seen, None, "head", 0, 0, "mean-heads", None, "layer")
    messages = []
    for text in (seen, unseen):
        with pytest.raises(gr.Error) as caught:
            handlers.switch(None, text, "head", 99, 0, "mean-heads", None, "layer")
        messages.append(str(caught.value.message))
    assert messages[0] == messages[1] and "model changed" not in messages[0]
