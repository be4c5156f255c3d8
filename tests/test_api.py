"""The launched app through gradio_client: the named /generate endpoint, its errors, cancellation."""

from __future__ import annotations

import threading

import pytest
from gradio_client.exceptions import AppError
from waiting import CEILING_S, ModelGate, wait_until

from demo.core.sampling import SamplingParams
from demo.runtime.generation import live_generation_threads

GOOD = dict(prompt="The old sea captain said", max_new_tokens=40, **SamplingParams(seed=7).as_dict())


def test_generate_endpoint_streams_growing_text(client):
    job = client.submit(**GOOD, api_name="/generate")
    updates = list(job)
    assert len(updates) >= 5
    texts = [u[0] for u in updates]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1].strip()
    assert "40 tokens generated" in updates[-1][1] or "model ended the text" in updates[-1][1]
    assert "seed 7" in updates[-1][1]


def test_the_readmes_streaming_pattern_raises_the_servers_message(client):
    """README: iterate the job for the streamed updates, then job.result() for the last one, which raises
    the server's message when a value was refused (the loop alone would just run zero times)."""
    job = client.submit(**{**GOOD, "temperature": 9}, api_name="/generate")
    assert list(job) == []
    with pytest.raises(AppError, match=r"temperature must be in \[0.05, 2\]"):
        job.result()
    job = client.submit(**{**GOOD, "max_new_tokens": 6}, api_name="/generate")
    streamed = [text for text, _ in job]
    text, stats = job.result()
    assert streamed and text == streamed[-1] and "6 tokens generated" in stats


def test_endpoint_parameters_are_named_like_transformers(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names == ["prompt", "max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                     "no_repeat_ngram_size", "do_sample", "seed"]


def test_same_seed_same_text_through_the_api(client):
    a = client.predict(**GOOD, api_name="/generate")
    b = client.predict(**GOOD, api_name="/generate")
    assert a[0] == b[0]


@pytest.mark.parametrize("field,value,message", [
    ("prompt", "", "prompt is empty"),
    ("prompt", "x" * 60_000, "prompt is too long"),
    ("max_new_tokens", 0, "max_new_tokens must be in"),
    ("max_new_tokens", 10**7, "max_new_tokens must be in"),
    ("max_new_tokens", "ten", "max_new_tokens must be a number"),
    ("temperature", -1, "temperature must be in"),
    ("temperature", 3, r"temperature must be in \[0.05, 2\]"),  # /generate accepts what its sliders show
    ("temperature", "hot", "temperature must be a number"),
    ("top_k", 2.5, "top_k must be a whole number"),
    ("top_p", 7, "top_p must be in"),
    ("do_sample", "maybe", "do_sample must be true or false"),
    ("seed", -7, "seed must be in"),
    ("seed", "abc", "seed must be a number"),
])
def test_bad_values_get_a_clear_error_and_the_next_request_works(client, field, value, message):
    with pytest.raises(AppError, match=message):
        client.predict(**{**GOOD, field: value, "max_new_tokens": GOOD["max_new_tokens"]
                          if field != "max_new_tokens" else value}, api_name="/generate")
    ok = client.predict(**{**GOOD, "max_new_tokens": 5}, api_name="/generate")
    assert ok[0]


def test_client_cancel_stops_the_generation_thread(client, live_app, monkeypatch):
    import gradio.routes

    received = threading.Event()  # the server has taken the client's /cancel (it cancels the task at once)
    real_cancel = gradio.routes.cancel_tasks

    async def noted_cancel(task_ids):
        received.set()
        return await real_cancel(task_ids)

    monkeypatch.setattr(gradio.routes, "cancel_tasks", noted_cancel)
    model = live_app[0].manager.require().model
    with ModelGate(model, hold_at=20) as gate:
        job = client.submit(**{**GOOD, "max_new_tokens": 500, "seed": 1}, api_name="/generate")
        assert gate.wait_held() and live_generation_threads(), "generation did not start"
        scheduler = live_app[0].manager.require().scheduler
        cancel = threading.Thread(target=job.cancel)
        cancel.start()
        assert received.wait(CEILING_S), "the cancel never reached the server"
        # Gradio cancels a generator between two of its updates, so the next token has to come: let
        # this pass go on and hold the next one, while the server closes the stream
        gate.hold()
        assert wait_until(lambda: scheduler.live == 0), "the server never cancelled the generation"
        gate.release()
        cancel.join()
        assert wait_until(lambda: not live_generation_threads()), "the generation thread never ended"
    assert gate.calls <= 21, "the model ran on after the client cancelled"


def test_load_model_of_a_hub_model_is_refused_and_the_model_keeps_serving(client, live_app):
    status = client.predict(name="gpt2", precision="auto", api_name="/load_model")  # visitors: local models only
    assert "lets visitors choose only" in status and "gutenberg-gpt" in status
    assert live_app[0].manager.require().name == "gutenberg-gpt"
    with pytest.raises(AppError, match="Model must be one of gutenberg-gpt, gpt2, .*; got '/etc/passwd'"):
        client.predict(name="/etc/passwd", precision="auto", api_name="/load_model")


def test_a_generation_that_ends_at_once_still_gets_its_record(tmp_path):
    """A model whose first token is <|endoftext|>: the first update is already the last one, and the
    probability view must still receive the generation's record."""
    import torch
    from conftest import make_tiny_checkpoint

    from demo.runtime.catalog import ModelSpec
    from demo.runtime.loading import load_model
    from demo.runtime.pool import ModelManager
    from demo.ui.tabs.generate import GenerateHandlers

    path = make_tiny_checkpoint(tmp_path / "eos-first")
    spec = ModelSpec("eos-first", str(path))
    loaded = load_model(spec, "fp32", device="cpu")
    eos = loaded.tokenizer.eos_token_id
    with torch.no_grad():  # every position's hidden state becomes the <|endoftext|> embedding, scaled up
        ln_f = loaded.model.transformer.ln_f
        ln_f.weight.zero_()
        ln_f.bias.copy_(loaded.model.transformer.wte.weight[eos] * 100)
    manager = ModelManager([spec], device="cpu")
    manager.add(loaded)
    updates = list(GenerateHandlers(manager).generate("Hello there", 5, 1.0, 0, 1.0, 0.0, 1.0, 0, False, 0))
    text, stats, record = updates[-1]
    assert text == "" and "model ended the text" in stats
    assert record is not None and [t["id"] for t in record["tokens"]] == [eos] and record["model"] == "eos-first"


def test_a_generation_clears_the_last_record_at_once_and_gives_the_new_one_only_at_its_end(bundled_loaded):
    """The record (the page's State behind the coloured view and the analysis buttons) is cleared by the
    first update and left as it is by the others, each of which would make Gradio rebuild the State's
    configuration; the last update gives the new record."""
    import gradio as gr

    from demo.runtime.pool import ModelManager
    from demo.ui.tabs.generate import GenerateHandlers

    manager = ModelManager([bundled_loaded.spec], device="cpu")
    manager.add(bundled_loaded)
    updates = list(GenerateHandlers(manager).generate("The old sea captain said", 200,
                                                      1.0, 0, 1.0, 0.0, 1.0, 0, False, 0))
    records = [record for _, _, record in updates]
    # at most 20 updates a second: 200 tokens take this CPU decode loop well over the 50 ms three need
    assert len(records) >= 3
    assert records[0] is None
    assert all(record == gr.skip() for record in records[1:-1])
    assert isinstance(records[-1], dict) and len(records[-1]["tokens"]) == 200


def test_streamed_updates_look_for_no_missing_module(client):
    """Around every event call Gradio imports matplotlib to switch its backend; the app does not install
    it, and each failed import searched sys.path again, twice per streamed update (demo.ui.event_costs)."""
    import importlib.abc
    import importlib.util
    import sys

    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed here: Gradio's switch is kept")
    looked_for: list[str] = []

    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            looked_for.append(name)
            return None

    recorder = Recorder()
    sys.meta_path.insert(0, recorder)
    try:
        job = client.submit(**{**GOOD, "max_new_tokens": 60}, api_name="/generate")
        assert list(job)
    finally:
        sys.meta_path.remove(recorder)
    assert "matplotlib" not in looked_for


def test_a_new_session_starts_without_a_copy_of_the_page_and_still_serves(live_app):
    """Gradio built a copy of the whole page's configuration for each new session (about 25 ms, each API
    call without a session being one); the app's sessions start without it (sessions_without_page_copy)
    and Gradio adds what events write."""
    from gradio_client import Client

    demo, url = live_app
    holder = demo.state_holder
    fresh = holder["a-session-of-this-test"]
    try:
        assert len(fresh.config_values) == 0
    finally:
        holder.session_data.pop("a-session-of-this-test", None)
        holder.time_last_used.pop("a-session-of-this-test", None)
    client = Client(url, verbose=False)  # a session of its own
    text, stats = client.predict(**{**GOOD, "max_new_tokens": 5}, api_name="/generate")
    assert text and "5 tokens generated" in stats
    event = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    written = {block._id for block in [*event.inputs, *event.outputs]}
    assert set(holder[client.session_hash].config_values) <= written  # not the page's other components


def test_samples_endpoint_equals_single_generations_with_the_same_seeds(client):
    out_html, data = client.predict(prompt="The sea was", n=3, first_seed=40, max_new_tokens=10,
                                    temperature=1.0, top_p=1.0, compare=True, temperature_b=0.3, top_p_b=0.9,
                                    api_name="/samples")
    samples = data["samples"]
    assert [s["seed"] for s in samples] == [40, 41, 42, 40, 41, 42]
    assert [s["row"] for s in samples] == [0, 0, 0, 1, 1, 1] and all(s["done"] for s in samples)
    assert samples[3]["settings"]["temperature"] == 0.3 and samples[3]["settings"]["top_p"] == 0.9
    for s in samples:  # each one, alone, with its seed and settings
        settings = {k: v for k, v in s["settings"].items() if k in GOOD}
        text, _ = client.predict(**{**GOOD, **settings, "prompt": "The sea was", "max_new_tokens": 10},
                                 api_name="/generate")
        assert text == s["text"], s["seed"]
    assert out_html.count("class='card'") == 6


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n", 9, r"n must be in \[2, 8\]"),
    ("n", 1, r"n must be in \[2, 8\]"),
    ("first_seed", 2**40, "seed"),
    ("temperature_b", 99, "temperature must be in"),
    ("top_p_b", "all", "top_p"),
    ("prompt", "", "prompt"),
])
def test_samples_endpoint_validates_on_the_server(client, field, value, message):
    with pytest.raises(Exception, match=message):
        client.predict(**{"prompt": "The sea was", "n": 2, "first_seed": 1, "max_new_tokens": 4, "compare": True,
                          "temperature_b": 1.0, "top_p_b": 1.0, field: value}, api_name="/samples")
