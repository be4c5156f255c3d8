"""Assemble the app: catalogue, model manager, first model, Blocks page and queue."""

from __future__ import annotations

import logging
import os

import gradio as gr

from .backend import ModelManager
from .catalog import load_catalog
from .errors import ExplorerError
from .ui import CSS, build_app

log = logging.getLogger("gpt_explorer")
QUEUE_IDLE_POLL_S = 0.005


def create_app(model: str | None = None, precision: str = "auto", extra_models: list[str] | None = None,
               device: str | None = None, load: bool = True):
    """Return (demo, launch_kwargs). A model that fails to load leaves the page up with the reason shown."""
    manager = ModelManager(load_catalog(extra=extra_models), device=device)
    if load:
        name = model or manager.names[0]
        try:
            loaded = manager.load(name, precision, progress=lambda f, msg: log.info("%s (%d%%)", msg, f * 100))
            log.info("serving %s", loaded.info())
        except ExplorerError as exc:
            manager.last_error = str(exc)
            log.error("no model loaded: %s", exc)
    demo = build_app(manager)
    demo.queue(max_size=int(os.environ.get("GPT_EXPLORER_QUEUE_SIZE", 64)), default_concurrency_limit=2)
    # Gradio's queue loop wakes every 1 ms while it waits for work, and each wake takes the GIL from the
    # thread that runs the model. Waking every 5 ms adds at most 5 ms before a request starts and gave
    # about 10 % more streamed tokens/s on CPU (benchmarks/bench_generate.py). Private attribute: if a
    # Gradio release renames it, nothing breaks, the app is only that much slower.
    q = getattr(demo, "_queue", None)
    if q is not None and isinstance(getattr(q, "sleep_when_free", None), float):
        q.sleep_when_free = max(q.sleep_when_free, QUEUE_IDLE_POLL_S)
    demo.manager = manager  # for tests and benchmarks
    return demo, {"theme": gr.themes.Soft(), "css": CSS}
