"""Many visitors on one server: the batched decode loop, a model per visitor in a bounded pool, every
model-running event inside a concurrency limit, private and capped exports, quiet logs."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
from conftest import BUNDLED, free_port, make_tiny_checkpoint
from waiting import CEILING_S, ModelGate, wait_until

from demo.core.errors import ModelLoadError, NoModelError, ValidationError
from demo.core.exports import ExportError, ExportFolder
from demo.core.sampling import PRESETS, validate_sampling
from demo.runtime.batching import BatchScheduler
from demo.runtime.catalog import ModelSpec
from demo.runtime.generation import (
    StopRequests,
    generate_alone,
    live_generation_threads,
    prepare_prompt,
    stream_generate,
    validate_request,
)
from demo.runtime.loading import load_model
from demo.runtime.pool import ModelManager

PROMPTS = ["It was a dark and stormy night, and", "The old man", "Alice was beginning to get very tired of",
           "Once", "In the morning the village woke to find that the river", "He said", "The cat sat on the mat.",
           "Tell me a story about the sea"]
# Eight requests with different settings: each sampling setting, greedy, and the penalties.
SETTINGS = [dict(seed=1), dict(seed=2, top_k=20), dict(seed=3, top_p=0.5, temperature=1.3),
            dict(seed=4, min_p=0.05), dict(seed=5, repetition_penalty=1.5), dict(seed=6, no_repeat_ngram_size=2),
            dict(do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=3), dict(seed=8, temperature=0.3)]


def requests(n_tokens: int = 30):
    return [validate_request(p, n_tokens, validate_sampling(**s)) for p, s in zip(PROMPTS, SETTINGS)]


def events(ticket):
    """A ticket's events one by one, as the decode loop sends them."""
    while True:
        yield from ticket.wait(1.0)


def drain(ticket) -> list[int]:
    return [event.token.token_id for event in events_of(ticket) if event.token is not None]


def events_of(ticket, errors_too: bool = False):
    """A ticket's events up to and including its end."""
    for event in events(ticket):
        yield event
        if event.reason is not None:
            assert errors_too or event.reason != "error", event.error
            return


def submit_all_at_once(loaded, reqs, drained: bool = True):
    """Submit ``reqs`` so that the decode loop starts with all of them: their token ids and the scheduler
    (or, not ``drained``, their tickets)."""
    scheduler = BatchScheduler(loaded)
    tickets = []
    hold = threading.Lock()
    hold.acquire()
    real_run = scheduler._run

    def run_after_all_are_queued():
        with hold:
            pass
        real_run()

    scheduler._run = run_after_all_are_queued
    for r in reqs:
        ids, _ = prepare_prompt(loaded, r.prompt, r.max_new_tokens)
        tickets.append(scheduler.submit(ids, r.sampling, r.max_new_tokens))
    hold.release()
    if not drained:
        return tickets
    return [drain(t) for t in tickets], scheduler


# ----------------------------------------------------------------------------- the batched decode loop


def test_the_same_seed_gives_the_same_text_alone_and_inside_a_batch_of_8(tiny_loaded):
    reqs = requests()
    alone = [[c.token_id for c in generate_alone(tiny_loaded, r)] for r in reqs]  # transformers' generate
    streamed = [[c.token_id for c in list(stream_generate(tiny_loaded, r))[-1].chosen] for r in reqs]
    batched, scheduler = submit_all_at_once(tiny_loaded, reqs)
    assert scheduler.max_batch == 8, "the eight requests should have decoded together"
    assert streamed == alone
    assert batched == alone
    assert all(len(ids) == 30 for ids in batched)


def test_requests_with_the_same_settings_are_chosen_together_and_still_match_alone(bundled_loaded):
    # The classroom case: everybody on the default settings (repetition penalty, temperature, top-p),
    # each with their own seed and prompt; the prompts are read in one forward pass, left-padded, and
    # the rows' tokens are chosen together. One request ends at its first token.
    balanced = [validate_request(p, 1 if i == 3 else 25, validate_sampling(seed=100 + i))
                for i, p in enumerate(PROMPTS)]
    focused = [validate_request(p, 25, replace(PRESETS["Focused"], seed=i)) for i, p in enumerate(PROMPTS[:3])]
    reqs = balanced + focused
    alone = [[c.token_id for c in generate_alone(bundled_loaded, r)] for r in reqs]
    batched, scheduler = submit_all_at_once(bundled_loaded, reqs)
    assert scheduler.max_batch == len(reqs) - 1, "the requests should have decoded together"
    assert batched == alone
    assert len(batched[3]) == 1 and all(len(ids) == 25 for i, ids in enumerate(batched) if i != 3)


def test_the_probabilities_a_row_records_are_those_it_has_alone(bundled_loaded):
    reqs = [validate_request(p, 12, validate_sampling(seed=7)) for p in PROMPTS[:4]]
    alone = [generate_alone(bundled_loaded, r) for r in reqs]
    scheduler = BatchScheduler(bundled_loaded)
    tickets = []
    for r in reqs:
        ids, _ = prepare_prompt(bundled_loaded, r.prompt, r.max_new_tokens)
        tickets.append(scheduler.submit(ids, r.sampling, r.max_new_tokens))
    for t in tickets:
        drain(t)
    for a, t in zip(alone, tickets):
        assert [c.token_id for c in t.chosen] == [c.token_id for c in a]
        for x, y in zip(t.chosen, a):
            assert x.prob == pytest.approx(y.prob, rel=1e-4)
            assert x.entropy_bits == pytest.approx(y.entropy_bits, rel=1e-4)
            assert [i for i, _ in x.alternatives] == [i for i, _ in y.alternatives]


def test_tokens_go_out_in_bunches_the_first_at_once_each_with_the_time_it_was_chosen(bundled_loaded, monkeypatch):
    import demo.runtime.batching as batching

    # no bunch falls due by the clock or by size: tokens go out when a row joins or ends
    monkeypatch.setattr(batching, "SAY_EVERY_S", 600.0)
    monkeypatch.setattr(batching, "UNSAID_ROWS", 10_000)
    request = validate_request("The old man", 12, validate_sampling(seed=5))
    alone = generate_alone(bundled_loaded, request)
    scheduler = BatchScheduler(bundled_loaded)
    ids, _ = prepare_prompt(bundled_loaded, request.prompt, request.max_new_tokens)
    with ModelGate(bundled_loaded.model, hold_at=4) as gate:  # the prompt's pass, two more, then held
        ticket = scheduler.submit(ids, request.sampling, request.max_new_tokens)
        assert gate.wait_held()
        first = ticket.ready()
        assert [e.token.token_id for e in first] == [alone[0].token_id], "the first token goes out before the next pass"
        assert len(ticket.chosen) == 1, "the two tokens chosen since wait, undescribed, for their bunch"
        released = time.perf_counter()
    *rest, end = events_of(ticket)
    events = first + rest
    assert end.reason == "length"
    assert [e.token.token_id for e in events] == [c.token_id for c in alone]
    assert [c.prob for c in ticket.chosen] == pytest.approx([c.prob for c in alone], rel=1e-4)
    times = [e.at for e in events]
    assert times == sorted(times) and len(set(times)) == len(times), "each token keeps the time it was chosen"
    assert times[1] < released and times[2] < released, "chosen before the hold, sent after it"


def test_a_stop_keeps_every_token_chosen_before_it_even_those_waiting_for_their_bunch(bundled_loaded, monkeypatch):
    import demo.runtime.batching as batching

    monkeypatch.setattr(batching, "SAY_EVERY_S", 600.0)  # tokens wait for a row to join or end
    monkeypatch.setattr(batching, "UNSAID_ROWS", 10_000)
    request = validate_request("The old man", 300, validate_sampling(do_sample=False))
    alone = generate_alone(bundled_loaded, replace(request, max_new_tokens=5))
    stops = StopRequests()
    with ModelGate(bundled_loaded.model, hold_at=6) as gate:  # the prompt's pass and four more, then held
        stream = stream_generate(bundled_loaded, request, stop=stops.signal("visitor"))
        first = next(stream)
        assert gate.wait_held()
        assert first.n_tokens == 1, "only the first token has gone out; four wait for their bunch"
        stops.request("visitor")
        last = list(stream)[-1]  # ends while the model is still held
    assert last.stop_reason == "stopped" and last.n_tokens == 5
    assert [c.token_id for c in last.chosen] == [c.token_id for c in alone]
    assert bundled_loaded.tokenizer.decode([c.token_id for c in alone], skip_special_tokens=True) == last.text


def test_a_failure_while_tokens_are_described_ends_every_waiting_stream_with_its_reason(bundled_loaded, monkeypatch):
    import demo.runtime.batching as batching

    real, calls = batching.describe_tokens, []

    def fails_the_second_time(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("describing failed")
        return real(*args)

    monkeypatch.setattr(batching, "describe_tokens", fails_the_second_time)
    monkeypatch.setattr(batching, "SAY_EVERY_S", 600.0)  # described only when a row joins or ends
    monkeypatch.setattr(batching, "UNSAID_ROWS", 10_000)
    greedy = validate_sampling(do_sample=False)
    # both read in one pass; the short one's last token, at the second decode pass, leaves the batch
    # before it is described
    reqs = [validate_request("The old man", n, greedy) for n in (3, 300)]
    tickets = submit_all_at_once(bundled_loaded, reqs, drained=False)
    for ticket in tickets:
        *_, end = events_of(ticket, errors_too=True)
        assert end.reason == "error" and str(end.error) == "describing failed"


def test_rows_join_and_leave_between_passes_without_disturbing_the_others(bundled_loaded):
    reqs = requests(40)
    alone = [[c.token_id for c in generate_alone(bundled_loaded, r)] for r in reqs[:3]]
    scheduler = BatchScheduler(bundled_loaded)
    out: dict[int, list[int]] = {}

    def submit(i):
        r = reqs[i]
        ids, _ = prepare_prompt(bundled_loaded, r.prompt, r.max_new_tokens)
        ticket = scheduler.submit(ids, r.sampling, r.max_new_tokens)
        thread = threading.Thread(target=lambda: out.__setitem__(i, drain(ticket)))
        thread.start()
        return thread

    # each later request arrives while the model is held mid-way through the ones before it
    with ModelGate(bundled_loaded.model, hold_at=3) as gate:
        threads = [submit(0)]
        for i in (1, 2):
            assert gate.wait_held()
            threads.append(submit(i))
            gate.hold(after=2)  # this pass goes on; the second one after it waits
    for t in threads:
        t.join()
    assert scheduler.max_batch == 3, "the later requests should have joined the running batch"
    assert [out[i] for i in range(3)] == alone


def test_a_stop_takes_the_row_out_at_the_next_pass_and_the_others_go_on(bundled_loaded):
    scheduler = BatchScheduler(bundled_loaded)
    ids, _ = prepare_prompt(bundled_loaded, "The old man", 400)
    params = validate_sampling(seed=3)
    keep = scheduler.submit(ids, params, 300)
    stop = scheduler.submit(ids, params, 400)
    for _, _ in zip(range(5), events(stop)):
        pass
    stop.cancel()  # hands on the tokens chosen before it
    chosen_at_cancel = len(stop.chosen)
    passes_at_cancel = scheduler.passes
    assert len(drain(keep)) == 300
    # at most the pass under way when the Stop came gives the stopped row a token, however slow the machine
    assert len(stop.chosen) - chosen_at_cancel <= 1, f"{len(stop.chosen) - chosen_at_cancel} tokens after the Stop"
    assert scheduler.passes > passes_at_cancel
    assert wait_until(lambda: not scheduler.active), "the decode loop never ended"
    assert not [t for t in live_generation_threads() if "generate" in t.name and scheduler._thread is t]


def test_closing_a_stream_stops_its_row(bundled_loaded):
    with ModelGate(bundled_loaded.model, hold_at=4) as gate:
        stream = stream_generate(bundled_loaded, validate_request("The old man", 500, PRESETS["Balanced"]))
        next(stream)
        assert gate.wait_held()
        stream.close()
        assert bundled_loaded.scheduler.live == 0
    assert wait_until(lambda: not live_generation_threads()), "the decode loop never ended"
    assert gate.calls == 4, "the only stream closed, yet the model ran on"


def test_the_last_update_goes_as_soon_as_the_generation_ends_whatever_the_pace(bundled_loaded, monkeypatch):
    import demo.runtime.generation as generation

    monkeypatch.setattr(generation, "update_interval", lambda streams: 600.0)  # one update per 10 minutes
    t0 = time.perf_counter()
    updates = list(stream_generate(bundled_loaded, validate_request("The old man", 12, validate_sampling(seed=1))))
    took = time.perf_counter() - t0
    assert updates[-1].done and updates[-1].n_tokens == 12
    assert len(updates) == 2, "the first token's update, then the last at the end"
    assert took < 300, f"the last update waited for the pace ({took:.1f} s)"


def test_between_updates_the_stream_is_not_woken_by_each_token(bundled_loaded, monkeypatch):
    """Every wake-up of the stream's thread takes Python's lock from the decode loop: once an update has
    gone, the stream sleeps until the next is due (or the generation ends), whatever tokens come meanwhile."""
    import demo.runtime.generation as generation
    from demo.runtime.batching import Ticket

    monkeypatch.setattr(generation, "update_interval", lambda streams: 600.0)  # the next update: in 10 minutes
    waits = []
    real_wait, real_wait_end = Ticket.wait, Ticket.wait_end
    with ModelGate(bundled_loaded.model, hold_at=2) as gate:  # the prompt's pass gives the first token; then held
        stream = stream_generate(bundled_loaded, validate_request("The old man", 40, validate_sampling(seed=1)))
        first = next(stream)  # the first token's update goes at once
        assert first.n_tokens == 1 and not first.done

        def wait(self, seconds):  # the stream waits for tokens: the rest of the generation then comes
            waits.append(seconds)
            gate.release()
            return real_wait(self, seconds)

        def wait_end(self, seconds):  # the stream sleeps until its next update or the end
            gate.release()
            return real_wait_end(self, seconds)

        monkeypatch.setattr(Ticket, "wait", wait)
        monkeypatch.setattr(Ticket, "wait_end", wait_end)
        rest = list(stream)
    assert len(rest) == 1 and rest[0].done and rest[0].n_tokens == 40
    assert not waits, f"woken for tokens {len(waits)} times before the next update was due"


def test_8_bit_generations_batch_too(tiny_loaded_int8):
    reqs = requests(12)
    batched, scheduler = submit_all_at_once(tiny_loaded_int8, reqs)
    assert scheduler.max_batch == 8 and all(len(ids) == 12 for ids in batched)


# ----------------------------------------------------------------------------- a model per visitor


@pytest.fixture(scope="module")
def pool_specs(tmp_path_factory):
    a = make_tiny_checkpoint(tmp_path_factory.mktemp("pool-a"), n_layer=2, seed=0)
    b = make_tiny_checkpoint(tmp_path_factory.mktemp("pool-b"), n_layer=3, seed=1)
    return [ModelSpec("a", str(a)), ModelSpec("b", str(b)), ModelSpec("hub", "some-org/some-model")]


def test_a_visitors_load_changes_their_model_only(pool_specs):
    manager = ModelManager(pool_specs, device="cpu")
    manager.load("a", "fp32")  # the operator's: the default
    manager.load("b", "fp32", session="alice", visitor=True)
    assert manager.require("alice").name == "b"
    assert manager.require("bob").name == "a" and manager.require().name == "a"
    manager.forget("alice")  # her page closed
    assert manager.require("alice").name == "a"


def test_a_model_loads_once_however_many_visitors_ask_at_once(pool_specs, monkeypatch):
    import demo.runtime.pool as backend

    calls = []
    real = backend.load_model

    others_wait = threading.Event()

    def slow_load(*args, **kwargs):  # b's load goes on once the other two visitors wait for it
        calls.append(args[0].name)
        if args[0].name == "b":
            assert others_wait.wait(CEILING_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "load_model", slow_load)
    manager = ModelManager(pool_specs, device="cpu")
    manager.load("a", "fp32")
    got, waits = [], []
    threads = [threading.Thread(target=lambda s=s: got.append(manager.load(
        "b", "fp32", session=s, visitor=True, progress=lambda f, msg: waits.append(msg)))) for s in "xyz"]
    threads[0].start()
    assert wait_until(lambda: "b" in calls)  # the first visitor's load has begun (and holds b's lock)
    for t in threads[1:]:
        t.start()
    assert wait_until(lambda: sum("being loaded for another visitor" in w for w in waits) == 2)
    others_wait.set()
    for t in threads:
        t.join()
    assert calls == ["a", "b"] and len({id(m) for m in got}) == 1
    assert any("being loaded for another visitor" in w for w in waits)


def test_the_pool_keeps_to_its_memory_budget_but_never_evicts_the_default_or_a_model_in_use(pool_specs):
    manager = ModelManager(pool_specs, device="cpu", memory_mb=0.001, recent_s=0)  # room for nothing but what must stay
    manager.load("a", "fp32")
    manager.load("b", "fp32", session="s1")
    manager.load("b", "int8", session="s2")  # over budget: b fp32 is idle and goes
    assert {(m.name, m.precision) for m in manager.loaded()} == {("a", "fp32"), ("b", "int8")}
    with pytest.raises(NoModelError, match="unloaded to make room"):
        manager.require("s1")
    with manager.use("s2"):  # a generation is using it
        manager.load("b", "fp32", session="s3")
        assert ("b", "int8") in {(m.name, m.precision) for m in manager.loaded()}
    manager.load("b", "fp32", session="s1")  # loading it again works
    assert manager.require("s1").precision == "fp32"


def test_the_budget_refuses_a_model_that_cannot_fit_before_loading_it(pool_specs):
    from demo.runtime.budget import estimate_bytes

    big_hub = ModelSpec("big", "some-org/big-model", parameters=2_000_000_000)  # 8 GB in fp32, never downloaded
    manager = ModelManager([*pool_specs, big_hub], device="cpu", memory_mb=64)
    manager.load("a", "fp32")
    manager.run_load = lambda fn, *args: pytest.fail("a load that cannot fit must not start")
    with pytest.raises(ModelLoadError, match=r"big \(fp32\) needs about 7,629 MB, more than this server's memory"):
        manager.load("big", "fp32", session="s1", visitor=True)
    tiny = estimate_bytes(pool_specs[1], "fp32")
    assert tiny and 0 < tiny < 64 * 2**20  # counted from the checkpoint's header, without loading it
    assert manager.require("s1").name == "a"  # nothing changed
    # in 8 bits on a CPU the tiny model's weights would fit, but what its load costs the process does not
    assert estimate_bytes(pool_specs[1], "int8", "cuda") < 64 * 2**20 < estimate_bytes(pool_specs[1], "int8", "cpu")
    with pytest.raises(ModelLoadError, match=r"b \(int8\) needs about \d+ MB, more than this server's memory"):
        manager.load("b", "int8", session="s1", visitor=True)


def test_a_visitors_load_of_a_model_of_unknown_size_is_refused_before_it_starts(pool_specs, monkeypatch):
    """An operator's Hub model without "parameters", whose safetensors headers the Hub does not give (no
    Hub is reachable here): the server cannot tell that it fits, so a visitor cannot load it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    manager = ModelManager(pool_specs, device="cpu", memory_mb=4096, visitor_models="all")
    manager.load("a", "fp32")
    manager.run_load = lambda fn, *args: pytest.fail("a load of unknown size must not start")
    with pytest.raises(ModelLoadError, match=r"hub \(fp32\) is of unknown size .* give it \"parameters\""):
        manager.load("hub", "fp32", session="s1", visitor=True)
    assert manager.require("s1").name == "a"


def test_an_8_bit_or_4_bit_load_on_a_cpu_counts_what_it_was_measured_to_cost():
    """The process grew by 487 MB (int8) and 458 MB (nf4) loading a GPT-2-small-size model (92.1 M
    parameters) on a CPU, and by 99 MB for the bundled model in int8 (5.4 M), under the app's heap policy."""
    from demo.runtime.budget import estimate_bytes

    for parameters, precision, measured_mb in ((92_100_000, "int8", 487), (92_100_000, "nf4", 458),
                                               (5_400_000, "int8", 99)):
        spec = ModelSpec("m", "some-org/m", parameters=parameters)
        estimate_mb = estimate_bytes(spec, precision, "cpu") / 2**20
        assert measured_mb <= estimate_mb <= 1.25 * measured_mb, (parameters, precision, estimate_mb)
        assert estimate_bytes(spec, precision, "cuda") < estimate_bytes(spec, precision, "cpu") / 2  # weights only


def test_a_visitors_load_never_unloads_a_model_someone_used_recently(pool_specs):
    from demo.runtime.budget import estimate_bytes

    per_model = max(estimate_bytes(s, "fp32") for s in pool_specs[:2])
    manager = ModelManager(pool_specs, device="cpu", visitor_models="all")
    manager.load("a", "fp32")  # the default
    manager.load("b", "fp32", session="alice", visitor=True)
    manager.require("alice")  # alice works with it
    manager.memory_mb = (manager.memory_bytes + per_model // 4) / 2**20  # room for the two, not for a third
    with pytest.raises(ModelLoadError, match="used in the last 10 minutes"):
        manager.load("b", "bf16", session="bob", visitor=True)
    assert manager.require("alice").precision == "fp32"  # alice's model stayed
    manager.recent_s = 0  # ten minutes later: nobody has used it since
    manager.load("b", "bf16", session="bob", visitor=True)  # now b fp32 may go to make room
    assert ("b", "fp32") not in {(m.name, m.precision) for m in manager.loaded()}
    assert manager.memory_bytes >= manager.require("bob").memory_bytes  # a load's cost: at least its weights


def test_the_operator_limits_what_visitors_may_load(pool_specs):
    only_loaded = ModelManager(pool_specs, device="cpu", visitor_models="loaded")
    only_loaded.load("a", "fp32")
    with pytest.raises(ValidationError, match="only models already loaded"):
        only_loaded.load("b", "fp32", session="s", visitor=True)
    assert only_loaded.load("a", "auto", session="s", visitor=True).name == "a"  # auto = fp32 on CPU: loaded
    local = ModelManager(pool_specs, device="cpu", visitor_models="local")
    local.load("a", "fp32")
    assert local.load("b", "fp32", session="s", visitor=True).name == "b"
    with pytest.raises(ValidationError, match="local checkpoints"):
        local.load("hub", "fp32", session="s", visitor=True)  # refused before any download is tried


def test_a_load_error_names_the_model_not_the_servers_folder(tmp_path):
    folder = tmp_path / "secret-place" / "mine"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{not json")
    manager = ModelManager([ModelSpec("mine", str(folder))], device="cpu")
    with pytest.raises(ModelLoadError) as err:
        manager.load("mine", "fp32", session="s", visitor=True)
    assert "mine" in str(err.value) and "secret-place" not in str(err.value) and str(tmp_path) not in str(err.value)


# ----------------------------------------------------------------------------- the app: sessions and limits


@pytest.fixture(scope="module")
def class_app(tiny_path):
    """The app with the bundled model and a tiny one visitors may choose."""
    from demo.app_factory import create_app

    demo, launch_kwargs = create_app(model="gutenberg-gpt", precision="fp32", device="cpu",
                                     extra_models=[f"tiny={tiny_path}"])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def test_the_direct_route_around_the_queue_is_closed(class_app):
    """POST /gradio_api/run/<name> (or with any event's fn_index) would run an event outside the queue and
    its concurrency limits: refused, whatever the host."""
    import httpx

    demo, url = class_app
    generate = next(i for i, fn in demo.fns.items() if fn.api_name == "generate")
    for path, body in (("gradio_api/run/predict", {"data": ["Once upon", 4], "fn_index": generate}),
                       ("gradio_api/api/generate", {"data": ["Once upon", 4]}),
                       ("gradio_api/run/generate", {"data": ["Once upon", 4]})):
        r = httpx.post(url + path, json=body, timeout=60)
        assert r.status_code == 404 and "join the queue" in r.text, (path, r.status_code, r.text[:200])
    assert not demo.api_open
    # Gradio still runs an event marked queue=False on the direct route (the page sends it there: an instant
    # reaction such as showing a view's controls): none of those may run a model
    direct = {getattr(fn.fn, "__name__", None) for fn in demo.fns.values() if fn.fn is not None and not fn.queue}
    instant = {"<lambda>", "load_example", "pick_token", "restore", "row_b_controls", "view_controls"}
    assert direct <= instant <= MODEL_FREE, direct - instant  # a new one: make sure it is as cheap, then add it


def test_the_queue_polls_seldom_while_a_model_works_and_often_when_idle(class_app):
    """Gradio's queue looks for work every few milliseconds, and each look takes Python's lock from the
    decode loop: every 20 ms while an event runs, every 5 ms when none does (a request to an idle server
    starts within 5 ms); progress bars every 100 ms. And the queue still starts what comes."""
    from gradio_client import Client

    from demo.ui import queue_poll

    demo, url = class_app
    queue = demo._queue
    assert queue.progress_update_sleep_when_free == queue_poll.PROGRESS_POLL_S
    assert wait_until(lambda: all(job is None for job in queue.active_jobs))
    assert queue.sleep_when_free == queue_poll.IDLE_POLL_S
    client = Client(url, verbose=False)
    with ModelGate(demo.manager.require().model, hold_at=3) as gate:
        first = client.submit(prompt="Once upon", max_new_tokens=20, api_name="/generate")
        assert gate.wait_held(), "the generation never started"
        assert queue.sleep_when_free == queue_poll.BUSY_POLL_S
        second = client.submit(prompt="The old man", max_new_tokens=2, api_name="/generate")  # queued meanwhile
        gate.release()
    for job in (first, second):  # both run to their end
        assert "tokens generated" in job.result(timeout=CEILING_S)[1]
    assert wait_until(lambda: queue.sleep_when_free == queue_poll.IDLE_POLL_S), "the queue stayed on the slow pace"


def test_a_huge_request_body_is_refused_before_it_is_read(class_app):
    import httpx

    from demo.core.http_limits import MAX_BODY_BYTES

    url = class_app[1]
    big = '{"data": ["' + "a" * (MAX_BODY_BYTES + 10) + '", 4]}'
    r = httpx.post(url + "gradio_api/call/generate", content=big, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 413 and "too large" in r.text

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"data": ["'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"a" * 65536
        yield b'", 4]}'

    r = httpx.post(url + "gradio_api/call/generate", content=chunks(), headers={"content-type": "application/json"},
                   timeout=60)
    assert 400 <= r.status_code < 500, r.status_code  # FastAPI answers 400: the body could not be read
    ok = httpx.post(url + "gradio_api/call/generate", json={"data": ["Once upon", 4]}, timeout=60)
    assert ok.status_code == 200 and "event_id" in ok.json()


def test_a_request_without_a_session_cannot_choose_a_model(class_app):
    """A bare /gradio_api/call/load_model names no session: Gradio gives it its event id as one, so the
    choice would be kept for nobody (and fill the visitors' table); it is refused in the status."""
    import json

    import httpx

    demo, url = class_app
    remembered = len(demo.manager._sessions)
    r = httpx.post(url + "gradio_api/call/load_model", json={"data": ["tiny", "fp32"]}, timeout=60)
    event_id = r.json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/call/load_model/{event_id}", timeout=120) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data:")]
    status = json.loads(lines[-1][5:])[0]
    assert "without a session cannot choose a model" in status
    assert len(demo.manager._sessions) == remembered


def test_a_visitors_model_switch_does_not_change_another_visitors_model(class_app):
    from gradio_client import Client

    alice, bob = Client(class_app[1], verbose=False), Client(class_app[1], verbose=False)
    status = alice.predict("tiny", "fp32", api_name="/load_model")
    assert "**tiny**" in status and "gutenberg-gpt" in status  # hers, and what else the server holds
    _, alice_data = alice.predict("The cat", 0, 0, "head", "mean-heads", -1, "layer", api_name="/attention")
    _, bob_data = bob.predict("The cat", 0, 0, "head", "mean-heads", -1, "layer", api_name="/attention")
    assert alice_data["model"] == "tiny" and bob_data["model"] == "gutenberg-gpt"
    params = dict(prompt="The cat", max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
    models = {m.name: m for m in class_app[0].manager.loaded()}
    request = validate_request("The cat", 6, validate_sampling(do_sample=False, repetition_penalty=1.0))
    expected = {name: m.tokenizer.decode([c.token_id for c in generate_alone(m, request)], skip_special_tokens=True)
                for name, m in models.items()}
    assert expected["tiny"] != expected["gutenberg-gpt"]
    assert alice.predict(**params, api_name="/generate")[0] == expected["tiny"]
    assert bob.predict(**params, api_name="/generate")[0] == expected["gutenberg-gpt"]
    assert class_app[0].manager.require().name == "gutenberg-gpt"  # the server's default is untouched


def test_a_hub_model_is_refused_to_visitors_by_default(class_app):
    from gradio_client import Client

    status = Client(class_app[1], verbose=False).predict("gpt2-xl", "fp32", api_name="/load_model")
    assert "lets visitors choose only" in status and "gpt2-xl" in status


# Event handlers that never run a model (they format, copy values between inputs, or load one: the
# "load" group has its own limit of one, and a page opened from a link loads its model there too; a
# Stop only notes the request).
MODEL_FREE = {"stop", "preset_values", "copy_settings", "_join", "open_tab", "view_controls", "pick_token", "<lambda>",
              "on_generation", "select", "clicked", "branch", "status", "forget", "load_model",
              "load_example", "restore", "link", "rerun", "export", "load_linked_model", "length_limit", "menu",
              "row_b_controls", "qr_codes"}


def test_every_event_that_runs_a_model_is_inside_a_model_concurrency_limit(class_app):
    demo = class_app[0]
    model_groups = ("model", "generate", "samples")
    outside = []
    for fn in demo.fns.values():
        name = getattr(fn.fn, "__name__", None)
        if fn.fn is None or name in MODEL_FREE:
            continue
        if fn.concurrency_id not in model_groups:
            outside.append(name)
    assert not outside, f"events that may run a model outside the model groups: {outside}"
    # each group's limit, as every event of it declares it (Gradio makes a group's queue when its first
    # event arrives, so the queues themselves depend on which events ran before)
    limits: dict = {}
    for fn in demo.fns.values():
        limit = demo._queue.default_concurrency_limit if fn.concurrency_limit == "default" else fn.concurrency_limit
        limits.setdefault(fn.concurrency_id, set()).add(limit)
    assert limits["model"] == {2} and limits["generate"] == {32} and limits["load"] == {1}
    assert limits["samples"] == {1}  # 16 rows each: half the loop's 32


def test_uploads_are_refused_and_gradio_cleans_its_cache(class_app):
    demo = class_app[0]
    assert demo.max_file_size == 1 and demo.delete_cache is not None
    assert demo.state_session_capacity <= 1000


# ----------------------------------------------------------------------------- fair admission


@pytest.fixture(scope="module")
def fair_app():
    """The app with small limits: 2 analysis slots, 5 requests per session, 8 per address, and the
    address read from X-Forwarded-For (as behind a Space's proxy), so a test can speak from several."""
    from demo.app_factory import create_app
    from demo.core.settings import Settings

    settings = Settings(model="gutenberg-gpt", precision="fp32", concurrency=2, session_limit=5, address_limit=8,
                        forwarded_for=True)
    demo, launch_kwargs = create_app(settings, device="cpu")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def join(app, text: str, session: str, address: str):
    """Queue one /attention request as the page does (POST /queue/join): (HTTP status, event id or reason)."""
    import httpx

    demo, url = app
    fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "attention")
    r = httpx.post(url + "gradio_api/queue/join", headers={"x-forwarded-for": address}, timeout=60,
                   json={"data": [text, 0, 0, "head", "mean-heads", -1, "layer"], "fn_index": fn_index,
                         "session_hash": session, "event_data": None, "trigger_id": None})
    return r.status_code, (r.json().get("event_id") if r.status_code == 200 else r.json().get("detail"))


def turns_in_order(app, run) -> list[tuple[str, str]]:
    """Run ``run(gate)`` with the model held from its first forward pass; returns the (address, session)
    of each request the queue started, in order (what the queue's choice of the next request gave)."""
    demo = app[0]
    fair, picks = demo.admission, []
    choose = fair.get_events

    def recorded(*args, **kwargs):
        chosen = choose(*args, **kwargs)
        if chosen:
            picks.extend(fair.visitor(e) for e in chosen[0] if e.concurrency_id == "model")
        return chosen

    fair.get_events = recorded
    try:
        with ModelGate(demo.manager.require().model.base_model, hold_at=1) as gate:  # what /attention runs
            run(gate)
    finally:
        del fair.get_events  # the class's own again
    return picks


def words(n: int, seed: int) -> str:
    return " ".join(["sea", "ship", "storm", "night", "captain", "wind"][(seed + i) % 6] for i in range(n))


def test_a_flood_from_one_session_is_capped_and_another_session_goes_next(fair_app):
    demo = fair_app[0]

    def run(gate):
        for i in range(5):  # the session's limit
            status, event = join(fair_app, words(20 + i, seed=i), "flood-session", "10.0.0.1")
            assert status == 200, event
        assert gate.wait_held()  # the first flood request is in the model; others wait their turn
        status, reason = join(fair_app, words(40, 0), "flood-session", "10.0.0.1")
        assert status == 503 and "already have 5 requests waiting or running" in reason
        assert wait_until(lambda: demo._queue.get_active_worker_count() >= 2)  # both analysis slots: the flood's
        status, victim = join(fair_app, words(12, 3), "another-session", "10.0.0.1")
        assert status == 200
        assert wait_until(lambda: any(e._id == victim for eq in demo._queue.event_queue_per_concurrency_id.values()
                                      for e in eq.queue))
        gate.release()
        assert wait_until(lambda: len(demo._queue) == 0 and demo._queue.get_active_worker_count() == 0)

    turns = turns_in_order(fair_app, run)
    assert [s for _, s in turns[:3]] == ["flood-session", "flood-session", "another-session"], turns
    assert demo.admission.refused >= 1


def test_a_flood_of_fresh_sessions_from_one_address_leaves_another_address_next(fair_app):
    demo = fair_app[0]

    def run(gate):
        for i in range(8):  # the address's limit, each request a session of its own
            status, event = join(fair_app, "Again: " + words(20 + i, seed=i), f"fresh-{i}", "10.0.0.7")
            assert status == 200, event
        assert gate.wait_held()
        status, reason = join(fair_app, words(50, 0), "fresh-9", "10.0.0.7")
        assert status == 503 and "Your network already has 8 requests" in reason
        assert wait_until(lambda: demo._queue.get_active_worker_count() >= 2)
        status, _ = join(fair_app, "Again: " + words(9, 5), "a-student", "10.0.0.8")  # another address
        assert status == 200
        assert wait_until(lambda: len(demo._queue) == 7)  # 6 flood + the student's wait
        gate.release()
        assert wait_until(lambda: len(demo._queue) == 0 and demo._queue.get_active_worker_count() == 0)

    turns = turns_in_order(fair_app, run)
    assert [a for a, _ in turns[:3]] == ["10.0.0.7", "10.0.0.7", "10.0.0.8"], turns  # the student's went third


def test_stops_are_counted_apart_from_work_with_a_small_cap_of_their_own():
    """A Stop never waits behind a visitor's own work limit, and a flood of Stops cannot fill the queue."""
    from types import SimpleNamespace

    from demo.ui.admission import STOPS_PER_SESSION, FairAdmission

    def request(host):
        return SimpleNamespace(headers={}, client=SimpleNamespace(host=host))

    def event(group, session, host="81.2.69.160"):
        return SimpleNamespace(concurrency_id=group, session_hash=session, request=request(host))

    fns = {0: SimpleNamespace(concurrency_id="stop"), 1: SimpleNamespace(concurrency_id="model")}
    waiting = [event("stop", "s1") for _ in range(STOPS_PER_SESSION)] + [event("model", "s1") for _ in range(3)]
    queue = SimpleNamespace(blocks=SimpleNamespace(fns=fns), active_jobs=[None],
                            event_queue_per_concurrency_id={"all": SimpleNamespace(queue=waiting)})
    fair = FairAdmission(queue, session_limit=3, address_limit=64)

    def why(fn_index, session):
        return fair.check(SimpleNamespace(fn_index=fn_index, session_hash=session), request("81.2.69.160"))

    assert why(0, "s2") is None  # another visitor's Stop: in, and s1's work does not count against it
    assert "Stops waiting" in why(0, "s1")  # s1 has as many Stops waiting as one may
    assert "requests waiting or running" in why(1, "s1")  # s1's work is at its own limit, Stops not counted
    waiting[:STOPS_PER_SESSION] = []
    assert why(0, "s1") is None  # s1 can stop its work whatever the work's count

    class FullQueue(SimpleNamespace):
        def __len__(self):
            return sum(len(q.queue) for q in self.event_queue_per_concurrency_id.values())

    full = FullQueue(**vars(queue))  # the operator's queue size (3) is reached by s1's work
    fair = FairAdmission(full, session_limit=3, address_limit=64, work_limit=3)
    assert "Queue is full" in why(1, "s2")  # work from anyone else waits for room
    assert why(0, "s2") is None  # a Stop still gets in, in the places kept for Stops


def test_one_address_keeps_a_quarter_of_a_large_group_free_for_others():
    from demo.ui.admission import client_address, group_share

    assert [group_share(n) for n in (None, 1, 2, 3, 4, 8, 32)] == [None, 1, 2, 3, 3, 6, 24]

    def request(forwarded: str):
        return type("Request", (), {"headers": {"x-forwarded-for": forwarded},
                                    "client": type("Client", (), {"host": "127.0.0.1"})()})()

    # what the client claimed, then the address the edge proxy saw, then the proxies' own private hops
    assert client_address(request("6.6.6.6, 81.2.69.160, 10.0.0.9, 10.1.2.3"), forwarded_for=True) == "81.2.69.160"
    assert client_address(request("10.0.0.7"), forwarded_for=True) == "10.0.0.7"  # a school's own proxy
    assert client_address(request("not-an-address, 192.168.1.5"), forwarded_for=True) == "192.168.1.5"
    assert client_address(request("81.2.69.160"), forwarded_for=False) == "127.0.0.1"  # not trusted: the socket
    # an IPv6 line is one visitor however many of its /64's addresses a client takes
    a, b = (client_address(request(f"2a00:1450:4001:81b::{n}, 10.0.0.9"), forwarded_for=True) for n in ("1", "beef"))
    assert a == b == "2a00:1450:4001:81b::/64"
    assert client_address(request("2a00:1450:4001:81c::1"), forwarded_for=True) != a  # another line
    assert client_address(request("::ffff:81.2.69.160"), forwarded_for=True) == "81.2.69.160"


# ----------------------------------------------------------------------------- exports


def test_exports_go_to_a_private_folder_and_refuse_a_planted_link(tmp_path):
    folder = ExportFolder()
    paths = folder.write("view", {"csv": "a,b\n1,2\n", "json": "{}"})
    root = folder.root
    assert all(p.startswith(str(root)) for p in paths)
    assert os.stat(root).st_mode & 0o077 == 0 and "gpt-explorer-exports-" in root.name  # private, unguessable
    folder.clear()

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    link = tmp_path / "exports-link"
    link.symlink_to(victim, target_is_directory=True)
    with pytest.raises(ExportError, match="not a plain folder"):
        ExportFolder(link).write("view", {"csv": "x"})

    root = tmp_path / "exports"
    root.mkdir(mode=0o700)
    planted = root / "old"
    planted.symlink_to(victim, target_is_directory=True)  # a link planted among the exports
    os.utime(victim, (0, 0))
    ExportFolder(root, keep_s=0).write("view", {"csv": "x"})
    assert (victim / "precious.txt").read_text() == "keep me" and not planted.exists()

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(ExportError, match="not private"):
        ExportFolder(shared).write("view", {"csv": "x"})


def made_earlier(export: list[str], seconds: float = 60) -> None:
    """Date an export's folder ``seconds`` back, so that it is the oldest whatever the clock's resolution."""
    folder = os.path.dirname(export[0])
    then = os.stat(folder).st_mtime - seconds
    os.utime(folder, (then, then))


def test_exports_are_capped_in_bytes_oldest_first(tmp_path):
    root = tmp_path / "exports"
    root.mkdir(mode=0o700)
    folder = ExportFolder(root, max_bytes=2500)
    first = folder.write("one", {"csv": "x" * 1000})
    made_earlier(first)
    folder.write("two", {"csv": "x" * 1000})
    folder.write("three", {"csv": "x" * 1000})  # the oldest goes to make room
    assert not os.path.exists(first[0]) and len(list(root.iterdir())) == 2
    with pytest.raises(ExportError, match="over the"):
        folder.write("huge", {"csv": "x" * 3000})


def test_a_new_process_removes_the_export_folders_no_running_process_holds(tmp_path, monkeypatch):
    import fcntl
    import tempfile

    from demo.core import exports

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def folder(name: str, holder: bool = True) -> Path:
        path = tmp_path / f"{exports.PREFIX}{name}"
        (path / "x").mkdir(parents=True)
        (path / "x" / "view.csv").write_text("token,p\n")
        if holder:
            (path / exports.HOLDER).touch()
        return path

    left = folder(f"{os.getpid()}-left")  # a process that ended (even one that had this process's id)
    held = folder("123-held")
    fd = os.open(held / exports.HOLDER, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a running process holds it, whatever its id
    unmarked = folder("456-new", holder=False)  # being made, or an older release's: left alone
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / exports.HOLDER).touch()
    link = tmp_path / f"{exports.PREFIX}789-link"
    link.symlink_to(outside, target_is_directory=True)

    made = ExportFolder()
    root = made.root
    assert not left.exists() and held.is_dir() and unmarked.is_dir() and outside.is_dir() and link.is_symlink()
    assert root.parent == tmp_path and root.name.startswith(f"{exports.PREFIX}{os.getpid()}-")
    assert exports.remove_orphans(tmp_path) == []  # the new folder is held too
    made.write("view", {"csv": "x"})
    assert (root / exports.HOLDER).exists()  # an export's clean-up keeps it
    os.close(fd)
    made._clear_at_exit(os.getpid() + 1)  # a forked child (a ZeroGPU worker) exiting: its parent's folder stays
    assert root.is_dir()
    made._clear_at_exit(os.getpid())  # what the process does as it exits
    assert not root.exists()


def test_exports_are_served_from_their_folder_not_copied_into_gradios_cache(class_app):
    """Gradio copies a file an event returns into its own cache, uncapped, unless it lies in a static
    path: the export folder is one, so each export is written once, inside the folder's caps."""
    import httpx
    from gradio import processing_utils

    demo, url = class_app
    files = next(b for b in demo.blocks.values() if isinstance(b, gr.File))
    paths = demo.exports.write("view", {"csv": "token,p\nthe,0.5\n", "json": "{}"})
    cache = Path(demo.GRADIO_CACHE)
    before = {p for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()
    served = processing_utils.move_files_to_cache(files.postprocess(paths), files, postprocess=True)
    assert [f["path"] for f in served] == paths, served  # as the queue does to an event's output
    after = {p for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()
    assert after == before  # no copy
    r = httpx.get(f"{url}gradio_api/file={paths[0]}", timeout=30)
    assert r.status_code == 200 and r.text == "token,p\nthe,0.5\n"


def test_exports_leave_the_disks_last_bytes_free_and_nothing_half_written(tmp_path, monkeypatch):
    import errno

    from demo.core import exports

    root = tmp_path / "exports"
    root.mkdir(mode=0o700)
    disk = 12_000  # a small disk: what the exports take is what it lacks

    def usage(path):
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return namedtuple("usage", "total used free")(disk, used, disk - used)

    monkeypatch.setattr(exports.shutil, "disk_usage", usage)
    folder = ExportFolder(root, max_bytes=10**9, min_free_bytes=10_000)
    first = folder.write("one", {"csv": "x" * 1000})
    made_earlier(first)
    folder.write("two", {"csv": "x" * 1000})
    folder.write("three", {"csv": "x" * 1000})  # the disk would keep less than 10,000 free: the oldest goes
    assert not os.path.exists(first[0]) and len(list(root.iterdir())) == 2
    with pytest.raises(ExportError, match="nearly full"):
        folder.write("huge", {"csv": "x" * 3000})
    assert usage(root).free >= 10_000

    real_fdopen, opened = os.fdopen, []

    def fails_on_the_second_file(fd, *args, **kwargs):
        opened.append(fd)
        if len(opened) == 2:
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    kept = set(root.iterdir())
    with monkeypatch.context() as m, pytest.raises(ExportError, match="No space left on device"):
        m.setattr(exports.os, "fdopen", fails_on_the_second_file)
        folder.write("view", {"csv": "a", "json": "b"})
    assert set(root.iterdir()) <= kept  # the half-written export is gone


# ----------------------------------------------------------------------------- logs


def test_8_bit_on_cpu_logs_one_line_per_cause(tiny_loaded_int8, caplog):
    with caplog.at_level(logging.INFO):
        list(stream_generate(tiny_loaded_int8, validate_request("The ship", 8, PRESETS["Greedy"])))
        list(stream_generate(tiny_loaded_int8, validate_request("The sea", 8, PRESETS["Greedy"])))
    bnb = [r for r in caplog.records if r.name.startswith("bitsandbytes")]
    assert len(bnb) <= 1


def test_new_settings_come_from_the_environment_with_clear_errors():
    from demo.core.settings import Settings

    s = Settings.from_env({"GPT_EXPLORER_VISITOR_MODELS": "loaded", "GPT_EXPLORER_MAX_STREAMS": "8",
                           "GPT_EXPLORER_MODEL_MEMORY_MB": "512", "GPT_EXPLORER_SESSIONS": "100"})
    assert (s.visitor_models, s.max_streams, s.model_memory_mb, s.sessions) == ("loaded", 8, 512, 100)
    assert Settings().visitor_models == "local"  # the safe default: no downloads for visitors
    with pytest.raises(ValidationError, match="GPT_EXPLORER_VISITOR_MODELS"):
        Settings.from_env({"GPT_EXPLORER_VISITOR_MODELS": "everything"})
    with pytest.raises(ValidationError, match="GPT_EXPLORER_MAX_STREAMS"):
        Settings.from_env({"GPT_EXPLORER_MAX_STREAMS": "0"})
    with pytest.raises(ValidationError, match="GPT_EXPLORER_THREADS"):
        Settings.from_env({"GPT_EXPLORER_THREADS": "0"})
    assert Settings.from_env({"GPT_EXPLORER_THREADS": "3"}).threads == 3


def test_torch_threads_follow_the_policy_unless_the_operator_sets_them(monkeypatch):
    import torch

    from demo.runtime import threads

    monkeypatch.setattr(threads, "POLICY", threads._Policy())
    assert [threads.serving_threads(n) for n in (1, 2, 4, 16)] == [1, 2, 4, 16]  # every core (measured best)
    before = torch.get_num_threads()
    try:
        assert threads.apply(3) == 3 and torch.get_num_threads() == 3  # GPT_EXPLORER_THREADS=3
        assert threads.serving_count() == 3 and threads.pass_threads_for("cpu") is None  # as the operator says
        assert threads.apply(None) == threads.serving_threads(threads.available_cores())
        assert threads.pass_threads_for("cpu") is not None  # the policy times its decode passes
    finally:
        torch.set_num_threads(before)


def _in_a_thread_of_its_own(fn):
    """``fn()`` in a thread that ends with it (torch keeps a thread count per thread)."""
    from demo.runtime import threads

    return threads.run_apart(fn)


def test_a_decode_loop_runs_each_size_of_batch_at_the_thread_count_its_timed_passes_found_faster():
    import torch

    from demo.runtime.threads import PassThreads

    assert PassThreads(1).counts == [1] and PassThreads(2).counts == [1, 2]
    assert PassThreads(6).counts == [1, 2, 4, 6] and PassThreads(16).counts == [1, 2, 4, 8, 16]

    def run():
        now = [0.0]
        # one row: 1 thread is faster; 16 rows: 2 threads; the first pass after a change costs 50 ms more
        # (the team resizes), which must not count against the count changed to
        cost = {1: {1: 0.004, 2: 0.005}, 16: {1: 0.030, 2: 0.020}}
        tuner = PassThreads(2, clock=lambda: now[0])
        tuner.start()
        seen = []

        def passes(rows, n):
            for _ in range(n):
                before = torch.get_num_threads()
                tuner.begin(rows)
                count = torch.get_num_threads()
                seen.append((rows, count))
                now[0] += cost[rows][count] + (0.05 if count != before else 0.0)

        passes(1, 7)  # rows join and leave in the middle of a measurement
        passes(16, 30)
        passes(1, 30)
        assert tuner.chosen(1) == 1 and tuner.chosen(16) == 2
        assert {c for r, c in seen if r == 1} == {1, 2}  # both were timed
        assert seen[-10:] == [(1, 1)] * 10  # then the faster stands
        tuner.full()  # reading prompts: every thread, and that time counts for no pass
        assert torch.get_num_threads() == 2
        now[0] += 10.0
        passes(16, 1)
        assert seen[-1] == (16, 2)

        cost[1] = {1: 0.006, 2: 0.003}  # the machine changed: one row is now faster on 2 threads
        passes(1, 10)
        assert tuner.chosen(1) == 1, "a choice stands for a while"
        now[0] += PassThreads.STANDS_S
        passes(1, 30)
        assert tuner.chosen(1) == 2 and seen[-5:] == [(1, 2)] * 5

        # new prompts read before every pass (full() each time): no pass can be timed, yet the
        # measurement ends, on every core (though 1 thread is faster here), instead of staying on a
        # count it cannot time
        cost[4] = {1: 0.001, 2: 0.002}
        for _ in range(PassThreads.ROUNDS * len(tuner.counts) * PassThreads.BLOCK + 1):
            tuner.full()
            passes(4, 1)
        assert tuner.chosen(4) == 2
        return True

    own = torch.get_num_threads()
    try:
        assert _in_a_thread_of_its_own(run)
    finally:
        _in_a_thread_of_its_own(lambda: torch.set_num_threads(own))  # the count later threads take


def test_the_policy_tunes_decode_passes_only_on_a_cpu_and_without_an_operator_setting(tiny_loaded, monkeypatch):
    import torch

    from demo.runtime import threads

    own = torch.get_num_threads()
    monkeypatch.setattr(threads, "POLICY", threads._Policy())
    assert threads.pass_threads_for("cpu") is None  # apply() not called: tools and tests keep torch's count
    monkeypatch.setattr(threads.POLICY, "count", 2)
    monkeypatch.setattr(threads.POLICY, "tuned", True)
    assert threads.pass_threads_for("cuda") is None
    assert threads.pass_threads_for("cpu").counts == [1, 2]

    # a decode pass's count changes only the decode loop's thread; model work elsewhere runs at the
    # serving count even where the count last set in the process (which a new thread takes) was 1
    _in_a_thread_of_its_own(lambda: torch.set_num_threads(1))
    assert threads.run_apart(torch.get_num_threads) == 2
    assert tiny_loaded.device_name == "CPU (2 threads)"

    counts = []  # (thread, count) of every pass
    scheduler = BatchScheduler(tiny_loaded)
    assert scheduler.threads is not None
    real_begin = scheduler.threads.begin

    def begin(rows):
        real_begin(rows)
        counts.append((threading.current_thread().name, torch.get_num_threads()))

    monkeypatch.setattr(scheduler.threads, "begin", begin)
    ids, _ = prepare_prompt(tiny_loaded, "Once upon a time", 40)
    try:
        drain(scheduler.submit(ids, validate_sampling(do_sample=False), 40))
    finally:
        _in_a_thread_of_its_own(lambda: torch.set_num_threads(own))  # the count later threads take
    assert {c for _, c in counts} == {1, 2} and all(t.startswith("gpt-explorer-generate") for t, _ in counts)
    assert scheduler.threads.chosen(1) in (1, 2)
    assert torch.get_num_threads() == own  # the test's own thread untouched


def test_model_work_outside_the_decode_loop_runs_in_a_thread_that_ends(tiny_path, monkeypatch):
    """Loads and analysis passes run in a short-lived thread of their own, so that no long-lived thread
    (the main thread after the start-up load, a Gradio worker after an analysis) keeps an OpenMP team
    beside the decode loop's (demo.runtime.threads)."""
    import contextvars

    from demo.core.cache import ModelCache
    from demo.core.settings import Settings
    from demo.runtime import pool, threads
    from demo.ui.common import AppContext

    visitor = contextvars.ContextVar("visitor", default=None)
    visitor.set("session-1")
    ran = []

    def work(x):
        ran.append(threading.current_thread())
        return x * 2, visitor.get()

    assert threads.run_apart(work, 21) == (42, "session-1")  # its result, with the caller's context
    assert ran[-1] is not threading.current_thread() and not ran[-1].is_alive()
    with pytest.raises(ZeroDivisionError):  # its exception, raised in the caller
        threads.run_apart(lambda: 1 / 0)

    original = pool.load_model

    def load_model(*args, **kwargs):
        ran.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(pool, "load_model", load_model)
    manager = ModelManager([ModelSpec("tiny", str(tiny_path))], device="cpu")
    loaded = manager.load("tiny", "fp32")
    assert ran[-1] is not threading.current_thread() and ran[-1].name.startswith(threads.APART_PREFIX)
    assert not ran[-1].is_alive()

    ctx = AppContext(manager, ModelCache(), Settings())
    analysis = ctx.gpu(lambda model, text: (ran.append(threading.current_thread()), (model.name, text))[1])
    assert analysis(loaded, "a text") == ("tiny", "a text")
    assert ran[-1] is not threading.current_thread() and not ran[-1].is_alive()


def test_bundled_model_in_a_batch_matches_alone_on_greedy():
    loaded = load_model(ModelSpec("gutenberg-gpt", str(BUNDLED)), "fp32", device="cpu")
    reqs = [validate_request(p, 24, PRESETS["Greedy"]) for p in PROMPTS]
    alone = [[c.token_id for c in generate_alone(loaded, r)] for r in reqs]
    batched, scheduler = submit_all_at_once(loaded, reqs)
    assert scheduler.max_batch == 8 and batched == alone


def test_a_session_keeps_neither_the_api_matrix_nor_a_page_copy_and_still_works(class_app):
    from gradio_client import Client

    demo = class_app[0]
    client = Client(class_app[1], verbose=False)
    _, data = client.predict("The cat sat on the mat. " * 20, 0, 0, "head", "mean-heads", -1, "layer",
                             api_name="/attention")
    assert len(data["weights"]) > 50
    session = demo.state_holder.session_data[client.session_hash]

    def kept():
        config = session.config_values
        return len(config) > 20 or any(isinstance(c.get("props", {}).get("value"), dict)
                                       and "weights" in c["props"]["value"] for c in config.values())

    assert wait_until(lambda: not kept(), interval_s=0.2), \
        "the session still holds the page's configuration or the attention matrix"
    # the same visitor goes on as before: Gradio writes into the emptied copy without noticing
    for _ in range(2):
        _, again = client.predict("The cat sat on the mat.", 0, 0, "head", "mean-heads", -1, "layer",
                                  api_name="/attention")
        assert again["tokens"][:3] == data["tokens"][:3]
        _, stats = client.predict(prompt="The old man", max_new_tokens=5, seed=3, api_name="/generate")
        assert "tokens generated" in stats
