"""Errors the backend raises with a message meant for the person using the app."""


class ExplorerError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence."""


class ValidationError(ExplorerError, ValueError):
    """A request value is missing, of the wrong type or out of range."""


class ModelLoadError(ExplorerError, RuntimeError):
    """A checkpoint could not be loaded (no network, missing files, refused format, out of memory)."""


class NoModelError(ExplorerError, RuntimeError):
    """No model is loaded yet."""
