"""The pool of loaded models and which one each visitor's session uses. Knows nothing of Gradio."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from demo.core.errors import ModelLoadError, NoModelError, ValidationError
from demo.core.settings import VISITOR_MODELS
from demo.core.validation import check_choice
from demo.runtime.budget import estimate_bytes, rss_bytes
from demo.runtime.catalog import ModelSpec, find_spec
from demo.runtime.loading import LoadedModel, ProgressFn, default_device, load_model, resolve_precision
from demo.runtime.threads import run_apart

ModelKey = tuple[str, str]  # (catalogue name, resolved precision)
MAX_SESSIONS = 10_000  # remembered model choices, least recently used first out
# A model someone used this recently is not unloaded to make room for another visitor's load (a lesson's
# model stays while the class works with it); that load is refused instead when nothing else can go.
RECENT_USE_S = 600


class SessionChoices:
    """Which model each visitor's session chose (sessions that chose none use the pool's default): a
    bounded map, least recently used first out. Not thread-safe on its own: the pool's lock guards it."""

    def __init__(self, capacity: int = MAX_SESSIONS):
        self.capacity = capacity
        self._choices: OrderedDict[str, ModelKey] = OrderedDict()

    def get(self, session: str | None, default: ModelKey | None) -> ModelKey | None:
        if session is None or session not in self._choices:
            return default
        self._choices.move_to_end(session)
        return self._choices[session]

    def choose(self, session: str, key: ModelKey) -> None:
        self._choices[session] = key
        self._choices.move_to_end(session)
        while len(self._choices) > self.capacity:
            self._choices.popitem(last=False)

    def forget(self, session: str | None) -> None:
        if session is not None:
            self._choices.pop(session, None)

    def __len__(self) -> int:
        return len(self._choices)


class ModelManager:
    """The loaded models and which one each visitor's session uses.

    A bounded pool: models are kept least-recently-used first out within ``memory_mb`` (what each one
    cost the process to load, :mod:`demo.runtime.budget`), except the default (what a new visitor
    gets), any model a request is using (:meth:`use`) and, when a visitor asks for room, any model
    used in the last ``recent_s`` seconds. A visitor's load is checked before it starts: a model
    whose estimated cost exceeds the budget, or that would fit only by unloading a model in recent
    use, is refused with the reason. Each model loads once however many visitors ask at the same
    time: the others wait for that load. A session's choice (:meth:`load` with ``session``) changes
    that session only; a load without a session (the operator's, at start-up) sets the default."""

    def __init__(self, catalog: list[ModelSpec], device: str | None = None, memory_mb: float | None = None,
                 visitor_models: str = "all", recent_s: float = RECENT_USE_S):
        self.catalog = list(catalog)
        self.device = device or default_device()
        self.memory_mb = memory_mb
        self.visitor_models = check_choice("visitor models", visitor_models, list(VISITOR_MODELS), exact=True)
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()  # least recently used first
        self._users: dict[ModelKey, int] = {}
        self._cost: dict[ModelKey, int] = {}  # bytes each load cost the process (at least its weights)
        self._used_at: dict[ModelKey, float] = {}  # time.monotonic() of each model's last use
        self.recent_s = recent_s
        self._sessions = SessionChoices()  # the visitor -> model map
        self._loading: dict[ModelKey, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts above (never held during a load)
        self._load_slot = threading.Lock()  # one load at a time, whatever asked for it (memory is checked after)
        self._owner_pid = os.getpid()
        self.default: ModelKey | None = None
        self.last_error: str | None = None
        self.notice: str | None = None  # why the default is not the model the app meant to start with
        self.warning: str | None = None  # about the server itself, for every visitor (a missing package)
        # Where a load runs: in a short-lived thread of its own by default (its OpenMP team ends with it:
        # demo.runtime.threads); on ZeroGPU in the thread where the package's CUDA emulation is active
        # (demo.runtime.zerogpu.HomeThread.call), whichever thread asks for it.
        self.run_load: Callable[..., Any] = run_apart

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.catalog]

    def key(self, name, precision="auto") -> ModelKey:
        """The pool key of a catalogue model in a precision ('auto' resolved); ValidationError if refused."""
        return find_spec(self.catalog, name).name, resolve_precision(precision, self.device)

    def get(self, key: ModelKey) -> LoadedModel | None:
        """The pool's model for ``key`` (name, resolved precision), if loaded."""
        with self._lock:
            return self._models.get(key)

    def keys(self) -> list[ModelKey]:
        """The (name, precision) of every model in the pool."""
        with self._lock:
            return list(self._models)

    def after_fork(self) -> None:
        """In a process forked from this one (a ZeroGPU worker): fresh locks, since a load that held
        one at the fork goes on in the parent only; loads run in the worker itself, on the device it
        has (the GPU on ZeroGPU)."""
        if self._owner_pid != os.getpid():
            self._lock, self._loading, self._owner_pid = threading.Lock(), {}, os.getpid()
            self._load_slot = threading.Lock()
            self.run_load = lambda fn, *args: fn(*args)
            self.device = default_device()

    # ------------------------------------------------------------------------- which model serves whom

    @property
    def current(self) -> LoadedModel | None:
        """The default model (a new visitor's)."""
        return self._models.get(self.default) if self.default else None

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def require(self, session: str | None = None) -> LoadedModel:
        """The model this session uses (the default for a session that chose none)."""
        with self._lock:
            return self._lookup(session)

    @contextlib.contextmanager
    def use(self, session: str | None = None) -> Iterator[LoadedModel]:
        """The session's model, kept from eviction until the block ends."""
        with self._lock:
            loaded = self._lookup(session)
            key = (loaded.name, loaded.precision)
            self._users[key] = self._users.get(key, 0) + 1
        try:
            yield loaded
        finally:
            self._release(key)

    def _release(self, key: ModelKey) -> None:
        """A request is done with a model: once nobody uses it, the pool may shrink back to its budget."""
        with self._lock:
            self._users[key] -= 1
            if not self._users[key]:
                self._evict(keep=self.default, spare_recent=True)

    def _lookup(self, session: str | None) -> LoadedModel:
        key = self._sessions.get(session, self.default)
        loaded = self._models.get(key) if key else None
        if loaded is None or key is None:
            if key is not None and key != self.default:
                raise NoModelError(f"{key[0]} ({key[1]}) was unloaded to make room for other models: "
                                   "load it again in the model menu.")
            why = f" The last attempt failed: {self.last_error}" if self.last_error else ""
            raise NoModelError(f"No model is loaded yet: choose one in the model menu.{why}")
        self._models.move_to_end(key)
        self._used_at[key] = time.monotonic()
        return loaded

    def forget(self, session: str | None) -> None:
        """A session ended (its page was closed): drop its choice."""
        with self._lock:
            self._sessions.forget(session)

    # ------------------------------------------------------------------------- loading

    def _visitor_may_load(self, name: str, loaded: bool) -> bool:
        """The operator's setting: a visitor may load what is loaded already (``loaded``), anything with
        "all", and a local checkpoint with "local"."""
        if loaded or self.visitor_models == "all":
            return True
        return self.visitor_models == "local" and find_spec(self.catalog, name).local_path is not None

    def check_visitor_may_load(self, key: ModelKey) -> None:
        """ValidationError when the operator's setting keeps visitors from loading this model."""
        if self._visitor_may_load(key[0], key in self._models):
            return
        loaded = ", ".join(f"{n} ({p})" for n, p in self._models) or "none"
        allowed = "models already loaded" if self.visitor_models == "loaded" else \
            "models already loaded and local checkpoints"
        raise ValidationError(f"This server lets visitors choose only {allowed}; {key[0]} ({key[1]}) is not one "
                              f"of them. Loaded now: {loaded}.")

    def visitor_may_choose(self, name: str) -> bool:
        """Whether a visitor can switch to ``name`` in some precision: it is loaded, or the operator's
        setting lets visitors load it."""
        return self._visitor_may_load(name, any(n == name for n, _ in self._models))

    def load(self, name, precision="auto", progress: ProgressFn | None = None, session: str | None = None,
             visitor: bool = False) -> LoadedModel:
        """Load a catalogue model (once: a model already loaded, or being loaded for someone else, is
        shared). With ``session`` that session uses it from now on; without, it becomes the default.
        ``visitor``: apply the operator's limit on what visitors may load. On failure nothing changes."""
        key = self.key(name, precision)
        if visitor:
            self.check_visitor_may_load(key)
        loaded = self._obtain(key, progress, default_on_error=session is None, visitor=visitor)
        with self._lock:
            self._models[key] = loaded  # back in, had another load evicted it in between
            self._models.move_to_end(key)
            if session is None:
                self.default, self.last_error, self.notice = key, None, None
            else:
                self._sessions.choose(session, key)
        return loaded

    @contextlib.contextmanager
    def hold(self, name, precision, progress: ProgressFn | None = None, visitor: bool = False
             ) -> Iterator[LoadedModel]:
        """A catalogue model in a precision, loaded if needed (once, like :meth:`load`) but chosen by
        nobody: kept from eviction until the block ends, then an ordinary pool member (a comparison's
        second precision)."""
        key = self.key(name, precision)
        if visitor:
            self.check_visitor_may_load(key)
        while True:
            loaded = self._obtain(key, progress, visitor=visitor)
            with self._lock:
                if self._models.get(key) is loaded:  # not evicted between the load and here
                    self._users[key] = self._users.get(key, 0) + 1
                    self._used_at[key] = time.monotonic()
                    break
        try:
            yield loaded
        finally:
            self._release(key)

    def _obtain(self, key: ModelKey, progress: ProgressFn | None, default_on_error: bool = False,
                visitor: bool = False) -> LoadedModel:
        """The pool's model for ``key``, loading it (once) when it is not there (a visitor's load only
        when it fits: :meth:`_check_room`)."""
        with self._lock:
            loaded = self._models.get(key)
            key_lock = self._loading.setdefault(key, threading.Lock())
        if loaded is None:
            if key_lock.locked() and progress:
                progress(0.02, f"{key[0]} ({key[1]}) is being loaded for another visitor: waiting for it")
            with key_lock:
                with self._lock:
                    loaded = self._models.get(key)
                if loaded is None:
                    try:
                        # the estimate may ask the Hub for a model's size: not while holding every load up
                        need = self._estimate(key) if visitor else None
                        if self._load_slot.locked() and progress:
                            progress(0.01, "another model is loading on this server: waiting for it to finish")
                        with self._load_slot:
                            if visitor:
                                self._check_room(key, need)
                            before = rss_bytes()
                            loaded = self.run_load(load_model, find_spec(self.catalog, key[0]), key[1], self.device,
                                                    progress)
                            after = rss_bytes()
                    except ModelLoadError as exc:
                        if default_on_error:
                            self.last_error = str(exc)
                        raise
                    grew = after - before if before is not None and after is not None else 0
                    with self._lock:
                        self._models[key] = loaded
                        self._cost[key] = max(loaded.memory_bytes, grew)
                        self._used_at[key] = time.monotonic()
                        self._evict(keep=key, spare_recent=visitor)
        return loaded

    def _estimate(self, key: ModelKey) -> int | None:
        return estimate_bytes(find_spec(self.catalog, key[0]), key[1], self.device)

    def _check_room(self, key: ModelKey, need: int | None) -> None:
        """ModelLoadError when a visitor's load cannot fit the budget: larger than all of it, or larger
        than what is left once every model that may go has gone (the default, models in use and models
        used in the last ``recent_s`` seconds stay)."""
        if self.memory_mb is None:
            return
        budget = int(self.memory_mb * 2**20)
        if need is None:
            raise ModelLoadError(f"{key[0]} ({key[1]}) is of unknown size (the catalogue gives no \"parameters\" for "
                                 "it and its safetensors headers could not be read), so this server cannot check that "
                                 f"it fits its memory for models ({budget / 2**20:,.0f} MB): choose another model. "
                                 "(Operators: give it \"parameters\" in the catalogue.)")
        what = f"{key[0]} ({key[1]}) needs about {need / 2**20:,.0f} MB"
        if need > budget:
            raise ModelLoadError(f"{what}, more than this server's memory for models ({budget / 2**20:,.0f} MB, "
                                 "GPT_EXPLORER_MODEL_MEMORY_MB): choose a smaller model or a lower precision.")
        with self._lock:
            staying = sum(self._cost_of(k) for k in self._models
                          if not self._may_evict(k, keep=None, spare_recent=True))
        if staying + need > budget:
            minutes = max(1, round(self.recent_s / 60))
            raise ModelLoadError(f"{what}, and the server's memory for models ({budget / 2**20:,.0f} MB) holds "
                                 f"models in use or used in the last {minutes} minutes ({staying / 2**20:,.0f} MB), "
                                 "which stay for the visitors using them: choose a model that is loaded already, "
                                 "or try again later.")

    def add(self, loaded: LoadedModel) -> None:
        """Put a model loaded elsewhere into the pool as the default (tests, scripts)."""
        key = (loaded.name, loaded.precision)
        with self._lock:
            self._models[key] = loaded
            self.default = key

    def _cost_of(self, key: ModelKey) -> int:
        return self._cost.get(key) or self._models[key].memory_bytes

    @property
    def memory_bytes(self) -> int:
        """What the loaded models cost the process, as measured at each load."""
        return sum(self._cost_of(k) for k in self._models)

    def _may_evict(self, key: ModelKey, keep: ModelKey | None, spare_recent: bool) -> bool:
        if key in (keep, self.default) or self._users.get(key):
            return False
        return not spare_recent or time.monotonic() - self._used_at.get(key, -math.inf) >= self.recent_s

    def _evict(self, keep: ModelKey | None, spare_recent: bool = False) -> None:
        """Unload least recently used models until the pool fits its budget; the default, ``keep``,
        models in use and (``spare_recent``: to make room for a visitor) models used in the last
        ``recent_s`` seconds stay (the pool may then stay over budget until they are free)."""
        if self.memory_mb is None:
            return
        freed = False
        while self.memory_bytes > self.memory_mb * 2**20:
            idle = [k for k in self._models if self._may_evict(k, keep, spare_recent)]
            if not idle:
                break
            del self._models[idle[0]]  # its cost stays known, should load() put it back
            freed = True
        if freed:
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()
