"""ZeroGPU's calling convention, emulated (tests/zerogpu_emulator.py): every model call takes and returns
plain data, a model switch reaches a warm worker, generation runs in slices that a Stop ends, each
call declares a fitting duration, and the worker runs one torch thread."""

from __future__ import annotations

import sys
import threading

import gradio as gr
import pytest
import torch
from conftest import BUNDLED, make_tiny_checkpoint
from waiting import wait_until
from zerogpu_emulator import FakeSpaces

from demo.core.cache import ModelCache
from demo.core.sampling import PRESETS, validate_sampling
from demo.core.settings import Settings
from demo.runtime import zerogpu
from demo.runtime.catalog import ModelSpec
from demo.runtime.generation import live_generation_threads, stream_generate, validate_request
from demo.runtime.loading import load_model
from demo.runtime.pool import ModelManager
from demo.runtime.zerogpu import ANALYSIS_S, slice_duration
from demo.ui.common import AppContext
from demo.ui.tabs.attention import AttentionHandlers
from demo.ui.tabs.generate import SAMPLING_ORDER, GenerateHandlers
from demo.ui.tabs.next_token import NextTokenHandlers

TEXT = "It was a dark and stormy night, and the old captain said"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    a = make_tiny_checkpoint(tmp_path_factory.mktemp("a"), n_layer=2, seed=0)
    b = make_tiny_checkpoint(tmp_path_factory.mktemp("b"), n_layer=3, seed=1)
    return [ModelSpec("a", str(a)), ModelSpec("b", str(b)), ModelSpec("bundled", str(BUNDLED))]


@pytest.fixture
def zero(monkeypatch, two_models):
    """(fake spaces, app context with ZeroGPU on, manager serving model 'a')."""
    fake = FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", fake)
    threads = torch.get_num_threads()
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")  # prepare_app sets it: undone after the test
    zerogpu.prepare_app()  # as create_app does on ZeroGPU
    manager = ModelManager(two_models, device="cpu")
    manager.load("a", "fp32")
    yield fake, AppContext(manager, ModelCache(), Settings(zero_gpu=True))
    fake.close()
    torch.set_num_threads(threads)


def generate_args(max_new_tokens: int, **sampling) -> list:
    params = validate_sampling(**sampling).as_dict()
    return [TEXT, max_new_tokens, *[params[n] for n in SAMPLING_ORDER]]


def sliced_generate(ctx: AppContext) -> GenerateHandlers:
    gen = GenerateHandlers(ctx.manager)
    gen.run_slice = ctx.gpu(gen.slice, duration=lambda request, state, n: slice_duration(n, state.tokens_per_s))
    return gen


def test_every_model_call_takes_and_returns_plain_data(zero):
    fake, ctx = zero
    attention = AttentionHandlers(ctx.manager, ctx.cache, ctx.gpu)
    fig, data = attention.api_attention(TEXT, 1, 2, "head", "mean-heads", -1, "layer")
    assert data["model"] == "a" and len(data["weights"]) == len(data["tokens"])
    attention.switch(TEXT, TEXT, "heads", 1, 0, "mean-heads", None, "layer")  # from the app's cache: no call
    next_token = NextTokenHandlers(ctx.manager, ctx.cache, ctx.gpu)
    view = next_token.refresh(TEXT, None, 10, "", *[v if v is not None else -1 for v in PRESETS["Balanced"].values()])
    assert view.state["text"] == TEXT
    assert next_token.api_logit_lens(TEXT, 4)["positions"]
    updates = list(sliced_generate(ctx).generate(*generate_args(20, seed=3)))
    assert updates[-1][2]["model"] == "a" and len(updates[-1][2]["tokens"]) == 20
    assert fake.calls >= 4  # attention, logits, lens, the generation's slices: all in the worker
    assert ctx.cache.peek("attention", ctx.manager.current, TEXT) is not None  # the cache stays in the app


def test_a_model_switch_reaches_the_warm_worker(zero):
    fake, ctx = zero
    attention = AttentionHandlers(ctx.manager, ctx.cache, ctx.gpu)
    assert attention.api_attention(TEXT, 0, 0, "head", "mean-heads", -1, "layer")[1]["n_layers"] == 2
    ctx.manager.load("b", "fp32")  # the worker was forked while 'a' served
    _, data = attention.api_attention(TEXT + " again", 0, 0, "head", "mean-heads", -1, "layer")
    assert data["model"] == "b" and data["n_layers"] == 3
    updates = list(sliced_generate(ctx).generate(*generate_args(5, seed=1)))
    assert updates[-1][2]["model"] == "b"
    assert fake.calls >= 3
    stream = sliced_generate(ctx).generate(*generate_args(100, seed=1))
    next(stream)
    ctx.manager.load("a", "fp32")  # a switch mid-generation: every slice still runs on the generation's model
    assert list(stream)[-1][2]["model"] == "b"


def test_sliced_generation_draws_the_same_tokens_as_one_generation(zero):
    _, ctx = zero
    loaded = ctx.manager.require()
    for sampling in (dict(seed=11), dict(temperature=1.3, top_k=40, repetition_penalty=1.3, seed=5),
                     dict(do_sample=False, no_repeat_ngram_size=3)):
        request = validate_request(TEXT, 60, validate_sampling(**sampling))
        whole = list(stream_generate(loaded, request))[-1]
        # the reference ran in this process: its decode loop's thread is gone before a worker is forked (a
        # thread inside torch at the fork is one way a worker could inherit a lock nobody releases)
        assert wait_until(lambda: not live_generation_threads()), "the decode loop never ended"
        sliced = list(sliced_generate(ctx).generate(*generate_args(60, **sampling)))
        assert [t["id"] for t in sliced[-1][2]["tokens"]] == [c.token_id for c in whole.chosen], sampling
        assert sliced[-1][0] == whole.text and len(sliced) > 1  # several slices, one text
        ttft_ms = float(sliced[-1][1].split("first token after ")[1].split(" ms")[0].replace(",", ""))
        assert ttft_ms < 1000 * zero[0].seconds[-len(sliced)]  # the first token, not the whole first slice


def test_stop_frees_the_gpu_within_a_slice(zero):
    fake, ctx = zero
    ctx.manager.load("bundled", "fp32")  # ~300 tokens/s here: 400 tokens take longer than a slice
    gen = sliced_generate(ctx)
    stream = gen.generate(TEXT, 400, *generate_args(400, seed=2)[2:])
    first = next(stream)  # the first slice (16 tokens) of 400
    stream.close()  # Stop, or a closed tab: the generator asks for no further slice
    assert fake.calls == 1 and first[0].count(" ") > 0 and first[2] is None
    with pytest.raises(StopIteration):
        next(stream)
    assert fake.calls == 1
    # a slice is bounded in time even when it may generate every remaining token: with no time left
    # after its first token it ends there
    loaded = ctx.manager.require()
    from demo.runtime.generation import generate_slice, start_slices

    request = validate_request(TEXT, 500, validate_sampling(seed=2))
    state = generate_slice(loaded, request, start_slices(loaded, request), 500, max_seconds=0.0)
    assert len(state.generated) == 1 and not state.done


def test_a_stop_request_ends_a_sliced_generation_with_its_text(zero):
    fake, ctx = zero
    ctx.manager.load("bundled", "fp32")
    gen = sliced_generate(ctx)
    stream = gen.generate(TEXT, 400, *generate_args(400, seed=2)[2:])
    first = next(stream)
    gen.stop()  # outside an event: the "anonymous" session's generations, which this one is
    last = list(stream)[-1]
    assert fake.calls == 1 and last[0] == first[0] and "stopped after 16 tokens" in last[1]
    assert len(last[2]["tokens"]) == 16  # the record of what was generated: the coloured view works


def test_each_call_books_a_duration_fitted_to_its_work_and_never_more_than_60_s(zero, monkeypatch):
    fake, ctx = zero
    attention = AttentionHandlers(ctx.manager, ctx.cache, ctx.gpu)
    attention.api_attention(TEXT, 0, 0, "head", "mean-heads", -1, "layer")
    attention.api_attention(TEXT + " two", 0, 0, "head", "mean-heads", -1, "layer")
    # the first call forks a worker from the app, whose pool has the model: no load to book
    assert fake.durations == [ANALYSIS_S, ANALYSIS_S]
    gen = sliced_generate(ctx)
    list(gen.generate(*generate_args(60, seed=4)))
    slices = fake.durations[2:]
    assert len(slices) >= 2 and slices[0] == slice_duration(zerogpu.FIRST_SLICE_TOKENS, None)
    assert all(d <= zerogpu.SLICE_OVERHEAD_S + 4 for d in slices)
    ctx.manager.load("b", "fp32")  # after the workers were forked: a warm one lacks it
    b_bytes = ctx.manager.require().memory_bytes
    attention.api_attention(TEXT, 0, 0, "head", "mean-heads", -1, "layer")
    assert fake.durations[-1] == ANALYSIS_S + zerogpu.load_allowance(b_bytes)  # sized to the model
    attention.api_attention(TEXT + " three", 0, 0, "head", "mean-heads", -1, "layer")
    assert fake.durations[-1] == ANALYSIS_S  # that worker said it holds 'b' now
    assert max(fake.durations) <= zerogpu.MAX_BOOKING_S
    huge = zerogpu.WorkerModel("huge", "fp32", 200 * 2**30)  # a load that could never fit: capped
    task = zerogpu.gpu_task(lambda loaded: None, ctx.manager, ANALYSIS_S, fake)
    task(ctx.manager.require())  # a worker of this task exists from now on, without 'huge'
    with pytest.raises(gr.Error):  # not a catalogue model: the worker cannot load it
        task(huge)
    assert zerogpu.load_allowance(huge.nbytes) > zerogpu.MAX_BOOKING_S and fake.durations[-1] == zerogpu.MAX_BOOKING_S
    assert zerogpu.slice_tokens(100.0, 1000) == 100 and zerogpu.slice_tokens(None, 5) == 5


def test_a_call_while_another_runs_gets_a_worker_of_its_own(zero):
    """As the package does when the scheduler reports the GPU busy: concurrent calls, separate workers."""
    fake, ctx = zero
    gate = ctx.manager
    import multiprocessing

    # the first call waits in its worker on a pipe the test controls
    parent, child = multiprocessing.get_context("fork").Pipe()

    def slow(loaded, wait):
        if wait:
            child.recv()  # until the test sends
        return loaded.name

    task = ctx.gpu(slow)
    first = []
    t = threading.Thread(target=lambda: first.append(task(gate.require(), True)))
    t.start()
    assert wait_until(lambda: len(fake.durations) == 1)  # the first call is booked and running
    assert task(gate.require(), False) == "a"  # answered while the first still waits
    parent.send(True)
    t.join(timeout=60)
    assert first == ["a"] and len(set(fake.pids)) == 2
    assert task(gate.require(), False) == "a" and fake.pids[-1] in fake.pids[:2]  # a warm one, reused


def test_the_worker_runs_one_torch_thread_and_the_model_it_is_told(zero):
    fake, ctx = zero
    task = zerogpu.gpu_task(lambda loaded: (torch.get_num_threads(), loaded.name), ctx.manager, 5, fake)
    ctx.manager.load("b", "fp32")
    torch.set_num_threads(2)  # the app's setting must not matter: the worker sets its own
    try:
        assert task(ctx.manager.require()) == (1, "b")
    finally:
        torch.set_num_threads(1)


@pytest.mark.timeout(90)
def test_a_load_in_progress_at_the_fork_does_not_lock_the_worker(zero):
    fake, ctx = zero
    task = ctx.gpu(lambda loaded: loaded.name)
    a = ctx.manager.require()
    with ctx.manager._lock, ctx.manager._loading.setdefault(("b", "fp32"), threading.Lock()):
        assert task(a) == "a"  # the app holds the pool's locks (a load under way) when the worker is forked
    ctx.manager.load("b", "fp32")
    assert task(ctx.manager.require()) == "b"  # the worker loads 'b' under its own locks, not the copies


def test_errors_in_the_worker_reach_the_visitor_with_their_message(zero):
    from demo.core.errors import ModelLoadError

    def fails():
        raise ModelLoadError("Could not download 'gpt2-xl' from the Hugging Face Hub (offline?).")

    with pytest.raises(gr.Error, match="Could not download 'gpt2-xl'"):
        zero[1].gpu(lambda loaded: fails())(zero[1].manager.require())


def test_without_the_spaces_package_functions_run_here(monkeypatch, tiny_spec):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    manager = ModelManager([tiny_spec], device="cpu")
    manager.add(load_model(tiny_spec, "fp32", device="cpu"))
    ctx = AppContext(manager, ModelCache(), Settings(zero_gpu=True))
    fn = lambda x: x + 1
    assert ctx.gpu(fn) is fn


def test_samples_say_they_need_the_model_in_this_process_on_zerogpu():
    """Samples side by side run the batched decode loop in the app's process: on ZeroGPU hardware they
    answer with a clear message instead of failing obscurely."""
    from demo.runtime.pool import ModelManager
    from demo.ui.tabs.samples import SamplesHandlers

    manager = ModelManager([], device="cpu")
    with pytest.raises(gr.Error, match="ZeroGPU"):
        next(SamplesHandlers(manager, zero_gpu=True).generate("Hi", 2, 1, 4, *[None] * 10))


def test_the_8_bit_comparison_runs_both_precisions_in_one_gpu_call(zero):
    from demo.core.exports import ExportFolder
    from demo.ui.tabs.precision import PrecisionHandlers

    fake, ctx = zero
    ctx.manager.load("bundled", "fp32")
    with ctx.manager.hold("bundled", "int8"):  # the second precision, loaded (in the app) beforehand
        pass
    calls = fake.calls
    data = PrecisionHandlers(ctx.manager, ctx.cache, ExportFolder(), ctx.gpu).api_compare(TEXT)
    assert data["reference_precision"] == "fp32" and data["other_precision"] == "int8"
    assert fake.calls == calls + 1 and fake.durations[-1] == ANALYSIS_S  # one call, both models there


@pytest.mark.parametrize("value, on", [("true", True), ("True", True), ("1", True), ("t", True), ("T", True),
                                       ("false", False), ("0", False), ("yes", False), ("", False), (None, False)])
def test_spaces_zero_gpu_is_read_as_the_package_reads_it(value, on):
    env = {} if value is None else {"SPACES_ZERO_GPU": value}
    assert Settings.from_env(env).zero_gpu is on


def test_a_zerogpu_space_without_the_spaces_package_says_so_at_start_up_and_on_the_page(monkeypatch, caplog):
    from demo.app_factory import create_app
    from demo.ui.page import format_model_status

    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")
    threads = torch.get_num_threads()
    try:
        demo, _ = create_app(Settings(zero_gpu=True), model="gutenberg-gpt", precision="fp32", device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert "`spaces` package is not installed" in caplog.text
    assert "`spaces` package is not installed" in format_model_status(demo.manager)
    assert demo.home is None and demo.manager.require().name == "gutenberg-gpt"  # it still serves, on the CPU


def test_the_home_thread_runs_what_other_threads_hand_it():
    home = zerogpu.HomeThread()  # this thread's
    seen = []

    def visitor():
        seen.append(home.call(threading.get_ident))
        try:
            home.call(lambda: 1 / 0)
        except ZeroDivisionError:
            seen.append("raised in the caller")
        home.close()

    t = threading.Thread(target=visitor)
    t.start()
    home.serve()  # until the visitor closes it
    t.join()
    assert seen == [threading.get_ident(), "raised in the caller"]
    late = []

    def after_close():
        try:
            home.call(int)
        except RuntimeError as exc:
            late.append(str(exc))

    t = threading.Thread(target=after_close)
    t.start()
    t.join()
    assert late == ["the app is shutting down"]  # an error, not a wait that never ends
