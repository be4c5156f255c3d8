"""The backend and generation on real (tiny and bundled) checkpoints: loading, streaming, seeds, Stop."""

from __future__ import annotations

import json

import pytest
import torch
from waiting import ModelGate, wait_until

from demo.core.errors import ModelLoadError, NoModelError, ValidationError
from demo.core.sampling import PRESETS, SamplingParams, validate_sampling
from demo.runtime.catalog import ModelSpec
from demo.runtime.generation import StopRequests, live_generation_threads, stream_generate, validate_request
from demo.runtime.loading import load_model
from demo.runtime.pool import ModelManager

GREEDY = SamplingParams(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def run(loaded, prompt, n, params):
    return list(stream_generate(loaded, validate_request(prompt, n, params)))


def test_load_fp32_reports_device_precision_memory(tiny_loaded):
    info = tiny_loaded.info()
    assert info["precision"] == "fp32" and info["device"].startswith("CPU")
    assert info["memory_mb"] > 0 and info["context_length"] == 128
    assert tiny_loaded.model.config._attn_implementation == "eager"
    assert next(tiny_loaded.model.parameters()).dtype == torch.float32


def test_load_int8_on_cpu_quantizes_linear_layers(tiny_loaded, tiny_loaded_int8):
    import bitsandbytes as bnb

    assert tiny_loaded_int8.precision == "int8"
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in tiny_loaded_int8.model.modules())
    assert tiny_loaded_int8.memory_bytes < tiny_loaded.memory_bytes
    ups = run(tiny_loaded_int8, "The ship", 8, GREEDY)
    assert ups[-1].done and ups[-1].n_tokens == 8


def test_auto_precision_is_fp32_on_cpu_and_int8_on_gpu():
    from demo.runtime.loading import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "int8"
    with pytest.raises(ValidationError):
        resolve_precision("fp8", "cpu")


def test_greedy_stream_equals_plain_generate(bundled_loaded):
    prompt, n = "It was a dark and stormy night, and", 60
    # the model is held at its 10th forward pass until the stream has shown some text: the text
    # streams while the model runs, however slow the machine and however updates are merged
    with ModelGate(bundled_loaded.model, hold_at=10) as gate:
        ups = []
        for u in stream_generate(bundled_loaded, validate_request(prompt, n, GREEDY)):
            ups.append(u)
            if not u.done and u.n_tokens:
                gate.release()
    partial = [u for u in ups if not u.done]
    assert partial and 0 < partial[0].n_tokens < 10, "text should stream before the model has finished"
    texts = [u.text for u in ups]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), "each update extends the previous text"
    tok, model = bundled_loaded.tokenizer, bundled_loaded.model
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             pad_token_id=tok.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    final = ups[-1]
    assert [c.token_id for c in final.chosen] == new
    assert final.text == tok.decode(new, skip_special_tokens=True)
    assert final.n_tokens == len(new) and final.ttft_s > 0 and final.tokens_per_s > 0


def test_same_seed_same_text_different_seed_differs(bundled_loaded):
    p = validate_sampling(temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=1234)
    a = run(bundled_loaded, "Once upon a time", 40, p)[-1]
    b = run(bundled_loaded, "Once upon a time", 40, p)[-1]
    c = run(bundled_loaded, "Once upon a time", 40, validate_sampling(temperature=1.0, top_p=1.0, seed=99))[-1]
    assert a.text == b.text and a.seed == 1234
    assert a.text != c.text


def test_random_seed_is_reported_and_reproduces(bundled_loaded):
    p = validate_sampling(seed=-1)
    a = run(bundled_loaded, "The garden", 20, p)[-1]
    assert a.seed is not None
    b = run(bundled_loaded, "The garden", 20, validate_sampling(seed=a.seed))[-1]
    assert a.text == b.text


def test_multibyte_characters_never_half_decoded(tiny_loaded):
    # a random model emits arbitrary byte tokens: no update may contain a replacement character
    # unless the final decoded text has one at the same place
    for seed in range(3):
        ups = run(tiny_loaded, "Café ☕ 東京", 40, validate_sampling(temperature=1.5, top_p=1.0, seed=seed))
        final = ups[-1].text
        for u in ups[:-1]:
            assert final.startswith(u.text)


def test_closing_the_stream_stops_the_generation_thread(bundled_loaded):
    with ModelGate(bundled_loaded.model, hold_at=5) as gate:
        stream = stream_generate(bundled_loaded, validate_request("The old man", 500, PRESETS["Balanced"]))
        first = next(stream)
        assert gate.wait_held() and live_generation_threads() and not first.done
        stream.close()  # a Stop, a closed tab: the row is cancelled while the model is mid-pass
        assert bundled_loaded.scheduler.live == 0
        gate.release()
        assert wait_until(lambda: not live_generation_threads()), "the generation thread never ended"
    assert gate.calls == 5, "the model ran another forward pass after the stream closed"


def test_a_stop_request_ends_the_stream_with_the_text_so_far(bundled_loaded):
    stops = StopRequests()
    with ModelGate(bundled_loaded.model, hold_at=6) as gate:
        stop = stops.signal("visitor/generate")
        stream = stream_generate(bundled_loaded, validate_request("The old man", 500, GREEDY), stop=stop)
        ups = [next(stream)]
        assert gate.wait_held()
        stops.request("visitor/generate")
        ups += list(stream)  # the stream ends by itself while the model is still held
        assert bundled_loaded.scheduler.live == 0
    last = ups[-1]
    assert last.done and last.stop_reason == "stopped" and 1 <= last.n_tokens <= 5
    assert len(last.chosen) == last.n_tokens  # the record holds exactly the tokens shown
    assert bundled_loaded.tokenizer.decode([c.token_id for c in last.chosen], skip_special_tokens=True) == last.text
    assert last.text.startswith(ups[0].text) and last.prompt_ids
    assert wait_until(lambda: not live_generation_threads())
    assert gate.calls == 6, "the model ran another forward pass after the Stop"


def test_stop_requests_stop_what_started_before_them_only():
    stops = StopRequests()
    before = stops.signal("a/generate", started=10.0)
    other = stops.signal("b/generate", started=10.0)
    stops.request("a/generate", at=11.0)
    after = stops.signal("a/generate", started=12.0)  # pressed Generate again after the Stop
    assert before() and not other() and not after()
    stops.request("a/generate", at=5.0)  # a late, older request changes nothing
    assert not after() and before()


def test_long_prompt_keeps_the_most_recent_tokens(tiny_loaded):
    prompt = "word " * 400  # ~400 tokens, context is 128
    final = run(tiny_loaded, prompt, 20, GREEDY)[-1]
    assert final.truncated_tokens > 0
    assert final.prompt_tokens == 128 - 20
    assert final.n_tokens == 20


def test_max_new_tokens_must_fit_the_context(tiny_loaded):
    with pytest.raises(ValidationError, match="context window"):
        run(tiny_loaded, "hello", 200, GREEDY)


def test_model_error_in_the_decode_loop_reaches_the_consumer_and_the_loop_recovers(tiny_loaded, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(tiny_loaded.model, "forward", boom)
    with pytest.raises(RuntimeError, match="kaboom"):  # raised, not a hang (pytest-timeout is the ceiling)
        run(tiny_loaded, "hello", 5, GREEDY)
    monkeypatch.undo()
    assert run(tiny_loaded, "hello", 5, GREEDY)[-1].n_tokens == 5  # the next generation is served


# ----------------------------------------------------------------------------- model manager


def test_failed_load_keeps_previous_model(tiny_spec, tmp_path):
    missing = ModelSpec("missing", str(tmp_path / "nope"))
    mgr = ModelManager([tiny_spec, missing], device="cpu")
    with pytest.raises(NoModelError):
        mgr.require()
    mgr.load("tiny", "fp32")
    with pytest.raises(ModelLoadError, match="does not exist"):
        mgr.load("missing", "fp32")
    assert mgr.require().name == "tiny"
    assert "does not exist" in mgr.last_error


def test_only_catalogue_models_load(tiny_spec):
    mgr = ModelManager([tiny_spec], device="cpu")
    for bad in ["/etc", "../models/x", "gpt2", 42, None]:
        with pytest.raises(ValidationError):
            mgr.load(bad, "fp32")


def test_hub_model_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Hugging Face Hub"):
        load_model(ModelSpec("gpt2", "openai-community/gpt2"), "fp32", device="cpu")


def test_pickle_checkpoint_is_refused(tiny_loaded, tmp_path):
    path = tmp_path / "pickled"
    tiny_loaded.model.config.save_pretrained(path)
    tiny_loaded.tokenizer.save_pretrained(path)
    torch.save(tiny_loaded.model.state_dict(), path / "pytorch_model.bin")
    assert list(path.glob("*.bin")) and not list(path.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(ModelSpec("pickled", str(path)), "fp32", device="cpu")


def test_non_causal_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(ModelSpec("vit", str(tmp_path)), "fp32", device="cpu")


def test_catalogue_lists_bundled_model_first_and_accepts_operator_models(tiny_path):
    from demo.core.settings import Settings
    from demo.runtime.catalog import load_catalog

    settings = Settings.from_env({"GPT_EXPLORER_MODELS": f"mine={tiny_path}"})
    cat = load_catalog(extra=[*settings.extra_models, "other=openai-community/gpt2"])
    names = [s.name for s in cat]
    assert names[0] == "gutenberg-gpt"
    assert {"gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "mine", "other"} <= set(names)
    assert next(s for s in cat if s.name == "mine").local_path == tiny_path


@pytest.mark.parametrize("fixture", ["tiny_loaded", "tiny_loaded_int8"])
def test_concurrent_generations_on_one_model_match_sequential_ones(fixture, request):
    import threading

    loaded = request.getfixturevalue(fixture)

    def text(seed):
        return run(loaded, "The ship sailed", 30, validate_sampling(temperature=1.2, top_p=1.0, seed=seed))[-1].text

    sequential = {s: text(s) for s in range(4)}
    concurrent = {}
    threads = [threading.Thread(target=lambda s=s: concurrent.__setitem__(s, text(s))) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert concurrent == sequential
    assert len(set(sequential.values())) > 1


# ----------------------------------------------------------------------------- precision on a GPU, warm-up


def test_quantized_models_compute_in_16_bit_on_a_gpu_and_fp32_on_cpu():
    from demo.core.settings import PRECISIONS
    from demo.runtime.loading import compute_dtype, load_kwargs

    assert compute_dtype("int8", "cpu") is torch.float32 and compute_dtype("nf4", "cpu") is torch.float32
    for capability in ((7, 5), (8, 0), (9, 0)):  # T4, A100, H100
        assert compute_dtype("int8", "cuda", capability) is torch.float16
    assert compute_dtype("nf4", "cuda", (7, 5)) is torch.float16  # no native bf16 on a T4
    assert compute_dtype("nf4", "cuda", (8, 6)) is torch.bfloat16
    int8 = load_kwargs("int8", "cuda", (7, 5))
    assert int8["dtype"] is torch.float16 and int8["quantization_config"].load_in_8bit
    assert int8["device_map"] == {"": 0}
    nf4 = load_kwargs("nf4", "cuda", (7, 5))
    assert nf4["quantization_config"].bnb_4bit_compute_dtype is torch.float16 and nf4["dtype"] is torch.float16
    assert load_kwargs("fp16", "cuda")["dtype"] is torch.float16 and load_kwargs("fp32", "cpu")["device_map"] is None
    for precision in set(PRECISIONS) - {"auto"}:
        kw = load_kwargs(precision, "cpu")
        assert kw["use_safetensors"] and kw["trust_remote_code"] is False and kw["attn_implementation"] == "eager"


def test_the_first_forward_runs_inside_the_load_lock_before_the_model_serves(tiny_spec, monkeypatch):
    import demo.runtime.loading as backend

    manager = ModelManager([tiny_spec], device="cpu")
    seen, real = [], backend.warm_up

    def spy(model, tokenizer):
        calls = []
        hook = model.register_forward_hook(lambda *a: calls.append(1))
        try:
            real(model, tokenizer)
        finally:
            hook.remove()
        seen.append((manager._loading[("tiny", "int8")].locked(), manager.current, len(calls)))

    monkeypatch.setattr(backend, "warm_up", spy)
    loaded = manager.load("tiny", "int8")
    assert seen == [(True, None, 1)]  # under the lock, before anyone could use it, one forward
    assert manager.current is loaded


def test_gpu_hardware_starts_gpt2_in_8_bit_and_cpu_the_bundled_model():
    from demo.app_factory import start_candidates
    from demo.core.settings import Settings

    names = ["gutenberg-gpt", "gpt2", "distilgpt2"]
    assert start_candidates(Settings(), "cuda", names) == [("gpt2", "int8"), ("gutenberg-gpt", "auto")]
    assert start_candidates(Settings(), "cpu", names) == [("gutenberg-gpt", "auto")]
    assert start_candidates(Settings(precision="fp16"), "cuda", names)[0] == ("gpt2", "fp16")
    assert start_candidates(Settings(model="distilgpt2"), "cuda", names) == [("distilgpt2", "auto")]


def test_when_the_hub_cannot_be_reached_the_bundled_model_serves_with_the_reason_on_the_page(monkeypatch):
    from demo.app_factory import start_model
    from demo.runtime.catalog import load_catalog
    from demo.ui.page import format_model_status

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manager = ModelManager(load_catalog(), device="cpu")
    start_model(manager, [("gpt2", "fp32"), ("gutenberg-gpt", "fp32")])  # as on a GPU Space without the Hub
    assert manager.require().name == "gutenberg-gpt"
    status = format_model_status(manager)
    assert "gpt2 (fp32) could not be loaded" in status and "Hugging Face Hub" in status
    assert "Serving gutenberg-gpt instead" in status
    manager.load("gutenberg-gpt", "int8")  # a later load by a visitor clears the notice
    assert manager.notice is None
