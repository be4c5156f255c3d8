"""The one analysis cache: bounded in entries and bytes, keyed by model, one computation per key."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import torch

from demo.analysis import attention as A
from demo.analysis import next_token as nt
from demo.core.cache import ModelCache

TEXT = "It was a dark and stormy night, and the old captain said"


def test_attention_and_logits_share_one_bounded_cache(tiny_loaded, tiny_loaded_int8):
    cache = ModelCache(max_entries=2)
    a = A.attention_of(tiny_loaded, "one", cache)
    A.attention_of(tiny_loaded, "two", cache)
    logits = nt.last_logits(tiny_loaded, [1, 2, 3], cache)
    A.attention_of(tiny_loaded, "three", cache)
    assert len(cache) == 3 and cache.peek("attention", tiny_loaded, "one") is None  # least recently used out
    assert nt.last_logits(tiny_loaded, [1, 2, 3], cache) is logits
    for i in range(5):  # many next-token steps do not push out the attention being studied
        nt.last_logits(tiny_loaded, [1, 2, 3, i], cache)
    assert cache.peek("attention", tiny_loaded, "three") is not None and len(cache) == 4
    b = A.attention_of(tiny_loaded_int8, "two", cache)  # another model (here: precision): another entry
    assert b.precision == "int8" and b is not a
    assert cache.peek("logits", tiny_loaded, "one") is None  # kinds do not collide
    assert cache.misses == 10 and cache.hits >= 2


def test_bytes_are_bounded_and_counted(tiny_loaded):
    cache = ModelCache(max_entries=100, max_bytes=3 * 400)  # entries per kind, bytes in all
    for i in range(6):
        cache.get("x", tiny_loaded, i, lambda: np.zeros(100, dtype=np.float32))  # 400 bytes each
    assert len(cache) == 3 and cache.nbytes == 1200
    cache.get("x", tiny_loaded, "big", lambda: torch.zeros(10_000))  # alone over budget: kept alone
    assert len(cache) == 1 and cache.nbytes == 40_000
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_new_model_with_a_reused_id_never_gets_stale_entries(tiny_loaded):
    cache = ModelCache()

    class Loaded:
        name, precision = "m", "fp32"

        def __init__(self):
            self.model = torch.nn.Linear(1, 1)

    first = Loaded()
    cache.get("x", first, "key", lambda: "old")
    key_id = id(first.model)
    del first.model
    gc.collect()
    second = Loaded()
    second.model = torch.nn.Linear(1, 1)
    if id(second.model) == key_id:  # the freed id was reused: the weak reference must catch it
        assert cache.peek("x", second, "key") is None
    assert cache.get("x", second, "key", lambda: "new") == "new"


def test_concurrent_requests_for_one_key_compute_once(tiny_loaded):
    cache = ModelCache()
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return A.compute_attention(tiny_loaded, TEXT)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("attention", tiny_loaded, TEXT, compute)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1
