"""One cache for what analysis computes from a model (attention weights, next-token logits).

Entries are keyed by (kind, model, request): ``kind`` names what is stored ('attention', 'logits'),
the model is identified by its object (a weak reference guards against a new model that happens to
get a freed model's ``id``) together with its name and precision, and the request is any hashable
value (a text, a tuple of token ids). The cache is bounded in entries (per kind, so a long run of
next-token steps cannot push out the attention of the text being studied) and in bytes (in all),
least recently used first out, and thread-safe; concurrent requests for the same key compute it once while other
keys compute in parallel.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

CACHE_ENTRIES = 64  # per kind
CACHE_BYTES = 640 * 2**20  # in all


def size_of(value: Any) -> int:
    """Bytes held by a cached value: its ``nbytes`` (attention results, numpy arrays), a tensor's
    storage, else a nominal 1 KB."""
    if isinstance(value, torch.Tensor):
        return int(value.element_size() * value.nelement())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int) else 1024


class ModelCache:
    """LRU of values computed from a loaded model, bounded by ``max_entries`` of each kind and
    ``max_bytes`` in all."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[weakref.ref, Any, int]] = OrderedDict()
        self._pending: dict[tuple, threading.Lock] = {}
        self._nbytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(kind: str, loaded, request: Hashable) -> tuple:
        return (kind, id(loaded.model), loaded.name, loaded.precision, request)

    def _lookup(self, key: tuple, model) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        ref, value, _ = entry
        if ref() is not model:  # the model was replaced and its id reused: stale
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def _drop(self, key: tuple) -> None:
        _, _, nbytes = self._entries.pop(key)
        self._nbytes -= nbytes

    def peek(self, kind: str, loaded, request: Hashable) -> Any | None:
        """The cached value, or None (never computes)."""
        with self._lock:
            value = self._lookup(self.key(kind, loaded, request), loaded.model)
            if value is not None:
                self.hits += 1
            return value

    def get(self, kind: str, loaded, request: Hashable, compute: Callable[[], Any],
            accept: Callable[[Any], bool] | None = None) -> Any:
        """The cached value, else ``compute()`` (once, however many threads ask for the same key).
        ``accept``: a cached value it refuses is computed again and replaced."""
        key = self.key(kind, loaded, request)

        def cached():
            value = self._lookup(key, loaded.model)
            if value is not None and accept is not None and not accept(value):
                self._drop(key)
                return None
            return value

        with self._lock:
            value = cached()
            if value is not None:
                self.hits += 1
                return value
            key_lock = self._pending.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                value = cached()
                if value is not None:
                    self.hits += 1
                    return value
                self.misses += 1
            try:
                value = compute()
                with self._lock:
                    if key in self._entries:
                        self._drop(key)
                    nbytes = size_of(value)
                    self._entries[key] = (weakref.ref(loaded.model), value, nbytes)
                    self._nbytes += nbytes
                    self._evict()
            finally:
                with self._lock:
                    self._pending.pop(key, None)
        return value

    def _evict(self) -> None:
        for key in [k for k, (ref, _, _) in self._entries.items() if ref() is None]:
            self._drop(key)
        per_kind: dict[str, list[tuple]] = {}
        for key in self._entries:  # oldest first
            per_kind.setdefault(key[0], []).append(key)
        for keys in per_kind.values():
            for key in keys[: max(0, len(keys) - self.max_entries)]:
                self._drop(key)
        while len(self._entries) > 1 and self._nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # a single entry stays: each value is bounded by its producer

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
            self.hits = self.misses = 0

