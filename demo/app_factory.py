"""Assemble the app: settings, catalogue, model manager, first model, analysis cache, page and queue."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from demo.core.cache import ModelCache
from demo.core.errors import ExplorerError
from demo.core.http_limits import BodyLimit
from demo.core.settings import Settings
from demo.runtime import zerogpu
from demo.runtime.catalog import load_catalog
from demo.runtime.memory import bound_heap
from demo.runtime.pool import ModelManager
from demo.ui import admission, event_costs, queue_poll
from demo.ui.common import AppContext, forget_page_copies, sessions_without_page_copy
from demo.ui.page import CSS, build_app

log = logging.getLogger("gpt_explorer")
MAX_UPLOAD_BYTES = 1  # the app takes no files: Gradio refuses any upload larger than a byte
# On GPU hardware the default is a real GPT-2 in 8-bit (the bundled 5 M-parameter model shows nothing of
# what quantization does); the bundled model stays the default on CPU: it starts fast and offline.
GPU_DEFAULT_MODEL = "gpt2"


def start_candidates(settings: Settings, device: str, names: list[str]) -> list[tuple[str, str]]:
    """(model, precision) to try at start-up, in order: the operator's choice, else on a GPU the
    GPT-2 checkpoint in 8-bit then the bundled model (the catalogue's first entry), else the bundled model."""
    if settings.model:
        return [(settings.model, settings.precision)]
    bundled = names[0]
    if device == "cuda" and GPU_DEFAULT_MODEL in names:
        gpu_precision = "int8" if settings.precision == "auto" else settings.precision
        return [(GPU_DEFAULT_MODEL, gpu_precision), (bundled, settings.precision)]
    return [(bundled, settings.precision)]


def start_model(manager: ModelManager, candidates: list[tuple[str, str]]) -> None:
    """Load the first candidate that loads. A fallback is explained on the page (``manager.notice``);
    when none loads the page comes up with the reason and the model menu."""
    failures = []
    for name, precision in candidates:
        try:
            loaded = manager.load(name, precision, progress=lambda f, msg: log.info("%s (%d%%)", msg, f * 100))
        except ExplorerError as exc:
            failures.append(f"{name} ({precision}) could not be loaded: {exc}")
            log.error("%s", failures[-1])
            continue
        log.info("serving %s", loaded.info())
        if failures:
            manager.notice = " ".join(failures) + f" Serving {loaded.name} instead."
        return
    manager.last_error = " ".join(failures)


def create_app(settings: Settings | None = None, *, model: str | None = None, precision: str | None = None,
               extra_models: list[str] | None = None, device: str | None = None, load: bool = True):
    """Return (demo, launch_kwargs). ``settings`` defaults to the environment's (read here, once); the
    keyword arguments override it. A model that fails to load leaves the page up with the reason shown."""
    settings = settings or Settings.from_env()
    settings = settings.replace(model=model, precision=precision,
                                extra_models=(*settings.extra_models, *extra_models) if extra_models else None)
    bound_heap()  # memory freed by analysis goes back to the system (demo.runtime.memory)
    home = zerogpu.prepare_app() if settings.zero_gpu else None
    manager = ModelManager(load_catalog(extra=list(settings.extra_models)), device=device,
                           memory_mb=settings.model_memory_mb, visitor_models=settings.visitor_models)
    if home is not None:
        manager.run_load = home.call  # loads run where the spaces package emulates CUDA (see zerogpu)
    elif settings.zero_gpu:
        log.error("%s", zerogpu.MISSING_SPACES)
        manager.warning = zerogpu.MISSING_SPACES
    if load:
        start_model(manager, start_candidates(settings, manager.device, manager.names))
    ctx = AppContext(manager=manager, cache=ModelCache(max_bytes=settings.analysis_cache_mb * 2**20),
                     settings=settings)
    demo = build_app(ctx)
    # api_open=False: an event reached by a direct POST (/gradio_api/run/…, /gradio_api/api/…) is refused,
    # so every request waits its turn in the queue and its concurrency group. Gradio closes that route
    # by itself only on a Space; a classroom server on --host 0.0.0.0 needs it closed as much.
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=ctx.concurrency, api_open=False)
    queue_poll.pace(demo)  # Gradio's queue polls for work: seldom while a model works (demo.ui.queue_poll)
    event_costs.skip_matplotlib_switch()  # no matplotlib import tried at every update (demo.ui.event_costs)
    # Fair turns and per-visitor limits on the queue (demo.ui.admission): no client can lock out the others.
    handle_admission = admission.install(demo, settings.session_limit, settings.address_limit, settings.forwarded_for)
    forget_page_copies(demo)
    handle: Any = demo  # what tests and benchmarks reach through the app
    handle.manager, handle.cache, handle.stops, handle.exports = manager, ctx.cache, ctx.stops, ctx.exports
    handle.admission = handle_admission
    handle.home = home  # on ZeroGPU: the thread app.py keeps serving loads in after launch
    # Bounded per-visitor memory and disk: Gradio keeps a little of each session (at most this many
    # sessions, each without its page copy: forget_page_copies), the app takes no uploads, and
    # Gradio's own file cache is cleaned (build_app).
    # and a bounded request body on every route (a 100 MB prompt is refused before it is read); new
    # sessions start without a page copy (sessions_without_page_copy)
    return demo, {"theme": gr.themes.Soft(), "css": CSS, "state_session_capacity": settings.sessions,
                  "max_file_size": MAX_UPLOAD_BYTES,
                  "app_kwargs": {"middleware": [Middleware(BodyLimit)], "lifespan": sessions_without_page_copy}}
