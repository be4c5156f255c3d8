"""Assemble the app: settings, catalogue, model manager, first model, analysis cache, page and queue."""

from __future__ import annotations

import logging

import gradio as gr

from .backend import ModelManager
from .cache import ModelCache
from .catalog import load_catalog
from .errors import ExplorerError
from .settings import Settings
from .ui.common import AppContext
from .ui.page import CSS, build_app

log = logging.getLogger("gpt_explorer")
QUEUE_IDLE_POLL_S = 0.005


def create_app(settings: Settings | None = None, *, model: str | None = None, precision: str | None = None,
               extra_models: list[str] | None = None, device: str | None = None, load: bool = True):
    """Return (demo, launch_kwargs). ``settings`` defaults to the environment's (read here, once); the
    keyword arguments override it. A model that fails to load leaves the page up with the reason shown."""
    settings = settings or Settings.from_env()
    settings = settings.replace(model=model, precision=precision,
                                extra_models=(*settings.extra_models, *extra_models) if extra_models else None)
    manager = ModelManager(load_catalog(extra=list(settings.extra_models)), device=device)
    if load:
        name = settings.model or manager.names[0]
        try:
            loaded = manager.load(name, settings.precision,
                                  progress=lambda f, msg: log.info("%s (%d%%)", msg, f * 100))
            log.info("serving %s", loaded.info())
        except ExplorerError as exc:
            manager.last_error = str(exc)
            log.error("no model loaded: %s", exc)
    ctx = AppContext(manager=manager, cache=ModelCache(), settings=settings)
    demo = build_app(ctx)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=2)
    # Gradio's queue loop wakes every 1 ms while it waits for work, and each wake takes the GIL from the
    # thread that runs the model. Waking every 5 ms adds at most 5 ms before a request starts and gave
    # about 10 % more streamed tokens/s on CPU (benchmarks/bench_generate.py). Private attribute: if a
    # Gradio release renames it, nothing breaks, the app is only that much slower.
    q = getattr(demo, "_queue", None)
    if q is not None and isinstance(getattr(q, "sleep_when_free", None), float):
        q.sleep_when_free = max(q.sleep_when_free, QUEUE_IDLE_POLL_S)
    demo.manager, demo.cache = manager, ctx.cache  # for tests and benchmarks
    return demo, {"theme": gr.themes.Soft(), "css": CSS}
