"""What every tab shares: the app context handed to each builder, the one place where an error
becomes the message a visitor sees, and the model's concurrency group."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from ..backend import ModelManager
from ..cache import ModelCache
from ..errors import ExplorerError
from ..settings import Settings
from ..zerogpu import ANALYSIS_S, gpu_task

# Every event that runs the model shares one concurrency group: one model on one device. The Generate
# events set the group's limit; the others join it without a limit of their own.
MODEL_QUEUE = dict(concurrency_id="model", concurrency_limit=None)
PRIVATE = dict(api_visibility="private")


@dataclass(frozen=True)
class AppContext:
    """What a tab builder needs from the app: the model manager, the analysis cache, the settings."""

    manager: ModelManager
    cache: ModelCache
    settings: Settings

    def gpu(self, fn: Callable, duration: int | Callable = ANALYSIS_S) -> Callable:
        """``fn`` as a ZeroGPU task on a ZeroGPU Space (the ``spaces`` package present), else unchanged.
        See :mod:`demo.zerogpu` for what that takes of ``fn``."""
        if not self.settings.zero_gpu:
            return fn
        try:
            import spaces
        except ImportError:
            return fn
        return gpu_task(fn, self.manager, duration, spaces, errors=to_gr_error)

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency_for(self.manager.device)


def unchanged(outputs: type[tuple]):
    """An outputs tuple (a NamedTuple class) whose every field leaves its component as it is."""
    return outputs(*[gr.skip()] * len(outputs._fields))


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
    wrapper.__signature__ = inspect.Signature(params, return_annotation=annotations.get("return", empty))
    wrapper.__annotations__ = annotations
    del wrapper.__wrapped__  # the signature above is the one to show
    return wrapper


def _positional(params: list[inspect.Parameter], args: tuple, kwargs: dict) -> list:
    bound = inspect.Signature(params).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())
