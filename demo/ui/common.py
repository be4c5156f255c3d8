"""What every tab shares: the app context handed to each builder, the one place where an error
becomes the message a visitor sees, the visitor's session, and the concurrency groups."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from demo.core.cache import ModelCache
from demo.core.errors import ExplorerError
from demo.core.exports import ExportFolder
from demo.core.settings import Settings
from demo.runtime.generation import StopRequests
from demo.runtime.pool import ModelManager
from demo.runtime.threads import run_apart
from demo.runtime.zerogpu import ANALYSIS_S, gpu_task

log = logging.getLogger("gpt_explorer")
PRIVATE: dict[str, Any] = dict(api_visibility="private")
# Generations wait on their model's batched decode loop (one thread per model, one forward pass per
# token for all of them): their events share the "generate" group, as many at once as the loop has rows.
GENERATE_QUEUE_ID = "generate"
# Every other event that runs a model (analysis) shares the "model" group and its limit
# (GPT_EXPLORER_CONCURRENCY); tests/test_structure.py checks that no such event is left outside.
MODEL_QUEUE_ID = "model"
# Samples side by side run several generations per event: a group of their own, sized in rows.
SAMPLES_QUEUE_ID = "samples"
MAX_SAMPLE_ROWS = 16  # 8 seeds x 2 settings (demo.analysis.side_by_side)
# A Stop only notes the request (the generation ends itself at its next check): its own group, no limit.
STOP_QUEUE_ID = "stop"


ANONYMOUS = "anonymous"  # outside any event (a script, a test): one session of its own


def current_session() -> str:
    """The session (a browser tab, or one API client) of the event being handled in this thread.
    Gradio keeps the event's request in a context variable while a handler (or each step of a
    generator handler) runs. A request that names no session (a bare ``/gradio_api/call/…``) is a
    session of its own, "anonymous:<event id>": session-less clients never share a model choice or a
    Stop. Outside an event: :data:`ANONYMOUS`."""
    try:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
        event_id = LocalContext.event_id.get(None)
    except (ImportError, AttributeError):  # pragma: no cover - a Gradio without it: one shared session
        request = event_id = None
    session = getattr(request, "session_hash", None)
    if request is None:
        return ANONYMOUS
    # Gradio's queue gives a request without a session its event id as session
    if isinstance(session, str) and session and session != event_id:
        return session
    return f"{ANONYMOUS}:{event_id or uuid.uuid4().hex}"


def is_sessionless(session: str) -> bool:
    """A request that named no session (see :func:`current_session`)."""
    return session.startswith(ANONYMOUS + ":")


def event_time() -> float:
    """When the event being handled reached the server (``time.monotonic()``, as Gradio's queue notes
    it), so that a Stop can tell a generation requested before it from one requested after it
    (:class:`demo.runtime.generation.StopRequests`). Outside a queued event (or where a Gradio release keeps
    no such note): now."""
    try:
        from gradio.context import LocalContext

        blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
        event = blocks._queue.event_ids_to_events.get(event_id) if blocks is not None and event_id else None
        return float(event.enqueue_time) if event is not None else time.monotonic()
    except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover - another Gradio release
        return time.monotonic()


def stop_owner(kind: str) -> str:
    """Whose generations a Stop of this kind ('generate', 'samples') ends: the visitor's session's."""
    return f"{current_session()}/{kind}"


@dataclass(frozen=True)
class AppContext:
    """What a tab builder needs from the app: the model manager, the analysis cache, the settings, the
    export folder, the visitors' Stop requests."""

    manager: ModelManager
    cache: ModelCache
    settings: Settings
    exports: ExportFolder = field(default_factory=ExportFolder)
    stops: StopRequests = field(default_factory=StopRequests)

    @property
    def stop_queue(self) -> dict[str, Any]:
        """Event options of a Stop: never waits behind other events (it only notes the request)."""
        return dict(concurrency_id=STOP_QUEUE_ID, concurrency_limit=None, show_progress="hidden")

    def gpu(self, fn: Callable, duration: int | Callable = ANALYSIS_S) -> Callable:
        """``fn(loaded, *args)`` as a ZeroGPU task on a ZeroGPU Space (the ``spaces`` package present),
        else run in a short-lived thread of its own (:func:`demo.runtime.threads.run_apart`: the OpenMP
        team its torch calls make ends with it, so the decode loop's team keeps its spin). See
        :mod:`demo.runtime.zerogpu` for what a ZeroGPU task takes of ``fn``."""
        if not self.settings.zero_gpu:
            @functools.wraps(fn)
            def apart(*args, **kwargs):
                return run_apart(fn, *args, **kwargs)
            return apart
        try:
            import spaces
        except ImportError:
            return fn
        return gpu_task(fn, self.manager, duration, spaces, errors=to_gr_error)

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency_for(self.manager.device)

    @property
    def model_queue(self) -> dict[str, Any]:
        """Event options of an event that runs a model outside generation."""
        return dict(concurrency_id=MODEL_QUEUE_ID, concurrency_limit=self.concurrency)

    @property
    def generate_queue(self) -> dict[str, Any]:
        """Event options of a generation event."""
        return dict(concurrency_id=GENERATE_QUEUE_ID, concurrency_limit=self.settings.max_streams)

    @property
    def samples_queue(self) -> dict[str, Any]:
        """Event options of a samples event: each holds up to MAX_SAMPLE_ROWS rows of the decode loop, so
        all of them together take at most half of what ``GPT_EXPLORER_MAX_STREAMS`` allows."""
        return dict(concurrency_id=SAMPLES_QUEUE_ID,
                    concurrency_limit=max(1, self.settings.max_streams // (2 * MAX_SAMPLE_ROWS)))


def export_controls(title: str, note: str) -> tuple[gr.Button, gr.File]:
    """A closed "Save …" accordion: how to save the picture and what the numbers hold (``note``), the
    button that prepares the CSV + JSON files, and where they appear for download."""
    with gr.Accordion(title, open=False):
        gr.Markdown(note)
        button = gr.Button("Prepare CSV + JSON", size="sm")
        files = gr.File(label="Download", file_count="multiple", interactive=False)
    return button, files


def unchanged(outputs: Any):
    """An outputs tuple (a NamedTuple class) whose every field leaves its component as it is."""
    return outputs(*[gr.skip()] * len(outputs._fields))


def event_field(evt: Any, name: str) -> Any:
    """A field of an event's data (None when absent): any client can send an event with data of its own
    or none, where Gradio's own attribute access fails with a bare error."""
    data = getattr(evt, "_data", None)
    return data.get(name) if isinstance(data, dict) else None


def to_gr_error(exc: Exception) -> gr.Error:
    """A user-facing error. Our own errors carry a complete sentence; anything else gets a short prefix."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, ExplorerError):
        return gr.Error(str(exc), print_exception=False)
    return gr.Error(f"Something went wrong: {type(exc).__name__}: {exc}")


def user_errors(fn: Callable) -> Callable:
    """Decorate an event handler (function or generator) so that any exception reaches the visitor
    as a :class:`gr.Error` (see :func:`to_gr_error`). ``GeneratorExit`` (a Stop, a closed tab) is
    not an ``Exception`` and passes through. Signature and annotations are kept for Gradio's API page."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise to_gr_error(exc) from exc

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_gr_error(exc) from exc

    return call


def with_parameters(fn: Callable, names: list[str], annotations: dict[str, type] | None = None,
                    defaults: dict | None = None) -> Callable:
    """``fn(*values)`` presented to Gradio with these named parameters (its API page and
    ``gradio_client`` keyword arguments), so a signature can derive from a definition.
    ``annotations`` may include 'return'."""
    annotations, defaults = dict(annotations or {}), dict(defaults or {})
    empty = inspect.Parameter.empty
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotations.get(n, empty),
                                default=defaults.get(n, empty)) for n in names]
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            yield from fn(*_positional(params, args, kwargs))
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*_positional(params, args, kwargs))
    signature = inspect.Signature(params, return_annotation=annotations.get("return", empty))
    setattr(wrapper, "__signature__", signature)  # noqa: B010 (a plain assignment does not type-check)
    wrapper.__annotations__ = annotations
    del wrapper.__wrapped__  # the signature above is the one to show
    return wrapper


def _positional(params: list[inspect.Parameter], args: tuple, kwargs: dict) -> list:
    bound = inspect.Signature(params).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


FORGET_EVERY_S = 5.0


class _NoPageCopy(dict):
    """A session's page copy after a sweep of :func:`forget_page_copies`: the entries Gradio writes
    until the next sweep, and an empty entry for any other component (never a KeyError)."""

    def __missing__(self, key):
        return {}


def forget_page_copies(demo: gr.Blocks, every_s: float = FORGET_EVERY_S) -> threading.Thread:
    """Gradio gives each session a copy of the whole page's configuration (``config_values``, about
    0.35 MB for this page, kept for Gradio's deep links, which the app does not use; new sessions start
    without it: :func:`sessions_without_page_copy`) and writes into it
    the last value of every input and output, such as /attention's matrix (about 10 MB at 512 tokens).
    Each new API client is a new session. A daemon thread replaces each session's copy with an empty
    one every ``every_s`` seconds, which leaves a session about 15 KB.

    Safe while events run: the thread only swaps the attribute for a new dict, and the stand-in
    answers a missing component with an empty entry, so Gradio's next write to the copy finds what it
    expects whichever dict it reaches. This reads Gradio's session store (``state_holder``, an internal
    part); where a release changes it, nothing is swept and ``GPT_EXPLORER_SESSIONS`` still bounds the
    memory."""
    ref = weakref.ref(demo)

    def sweep_forever():
        while True:
            time.sleep(every_s)
            app = ref()
            if app is None:
                return
            sessions = getattr(getattr(app, "state_holder", None), "session_data", None)
            if not isinstance(sessions, dict):
                return
            for session in list(sessions.values()):
                config = getattr(session, "config_values", None)
                if isinstance(config, dict) and (config or not isinstance(config, _NoPageCopy)):
                    session.config_values = _NoPageCopy()
            del app

    thread = threading.Thread(target=sweep_forever, name="gpt-explorer-forget-page-copies", daemon=True)
    thread.start()
    return thread


class _PageWithoutCopy:
    """The page as Gradio's session store shows it to each new session: its configuration, and no
    component whose configuration the session would copy; anything else is the page's own."""

    def __init__(self, page: Any):
        self._page = page

    @property
    def blocks(self) -> dict:
        return {}

    def __getattr__(self, name: str) -> Any:
        if name == "_page":  # an instance made without __init__ (a copy): no page to ask
            raise AttributeError(name)
        return getattr(self._page, name)


@contextlib.asynccontextmanager
async def sessions_without_page_copy(app: Any) -> AsyncIterator[None]:
    """A lifespan for Gradio's server (``launch(app_kwargs={"lifespan": ...})``) that starts every
    session without the page copy of :func:`forget_page_copies`.

    Gradio builds that copy for each new session, calling every component's ``get_config`` (with
    ``inspect.signature``): about 25 ms of the event loop's time for this page, before the first
    event of the session runs. Each API call without a session is a new session, so this was most of
    what the server added to a ``/generate`` call's first token. Gradio's session store builds a
    session from the page it holds; it now holds the page seen through :class:`_PageWithoutCopy`.
    The copy is only for Gradio's deep links, which the app does not use, and Gradio writes into it
    what it needs as events run. This reads Gradio's session store (``state_holder``, an internal
    part); where a release changes it, or after an in-place reload of the app (which gives the store
    the page again), sessions start with their copy, as before."""
    holder = getattr(app, "state_holder", None)
    page = getattr(holder, "blocks", None)
    if holder is not None and hasattr(page, "default_config"):
        if not isinstance(page, _PageWithoutCopy):  # not yet seen by an earlier server on the same app
            holder.blocks = _PageWithoutCopy(page)
    else:
        log.info("Gradio's session store is not one this app knows: sessions start with a page copy")
    yield
