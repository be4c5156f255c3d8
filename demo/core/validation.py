"""Input validation: the one place where a value from the page or the API becomes a valid value.

Every request value passes through a ``check_*`` function here before it reaches the backend, the
analysis or the plots, which then trust what they receive. Each check raises
:class:`~demo.core.errors.ValidationError` with a sentence that names the setting and what was wrong;
the UI turns it into the message a visitor sees. :func:`encode_text` is the one way a text becomes
the model's token ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from demo.core.errors import ValidationError

MAX_SEED = 2**32 - 1
MAX_TEXT_CHARS = 50_000  # a prompt or analysed text; well past any bundled model's context window
_SHOWN = 40  # at most this many characters of a rejected value are quoted back


def quoted(value) -> str:
    """A rejected value as an error message shows it: at most 40 characters of its repr."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


# ----------------------------------------------------------------------------- numbers, booleans, seeds


def _number(name: str, value, integer: bool) -> float | int:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValidationError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except (ValueError, OverflowError):
            raise ValidationError(f"{name} must be a number, got {value[:_SHOWN]!r}") from None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int like 10**400
        raise ValidationError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number, got {value}")
    if integer:
        if value != int(value):
            raise ValidationError(f"{name} must be a whole number, got {value}")
        return int(value)
    return value


def check_number(name: str, value, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    """A finite int/float within [lo, hi] (or (lo, hi] with ``lo_open``); numeric strings are accepted."""
    v = _number(name, value, integer)
    if v < lo or v > hi or (lo_open and v == lo):
        bracket = "(" if lo_open else "["
        raise ValidationError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {v:g}")
    return v


def _is_minus_one(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == -1


def check_index(name: str, value, count: int) -> int:
    """A whole number in [0, count): a layer, a head, a position in a list."""
    return check_number(name, value, 0, count - 1, integer=True)


def check_position(name: str, value, count: int) -> int:
    """Like :func:`check_index`, where None or -1 mean the last position."""
    if value is None or _is_minus_one(value):
        return count - 1
    return check_index(name, value, count)


def check_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValidationError(f"{name} must be true or false, got {str(value)[:_SHOWN]!r}")


def check_seed(value) -> int | None:
    """A seed in [0, 2^32); None, '' or -1 mean "pick a random seed" (returned as None)."""
    if value is None or value == "" or _is_minus_one(value):
        return None
    return check_number("seed", value, 0, MAX_SEED, integer=True)


# ----------------------------------------------------------------------------- choices and texts


def check_choice(name: str, value, options: Mapping[str, str] | list[str], default: str | None = None, *,
                 exact: bool = False) -> str:
    """One of ``options``: a key, or (for a mapping of key -> label) its label, case-insensitively and
    ignoring surrounding spaces unless ``exact``. None gives ``default`` when there is one."""
    if value is None and default is not None:
        return default
    labels = options if isinstance(options, Mapping) else {k: k for k in options}
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be one of {', '.join(labels)}; got {type(value).__name__}")
    if exact:
        if value in labels:
            return value
    else:
        v = value.strip().lower()
        for key, label in labels.items():
            if v in (key.lower(), label.lower()):
                return key
    raise ValidationError(f"{name} must be one of {', '.join(labels)}; got {quoted(value)}")


def well_formed(text: str) -> str:
    """``text`` with each lone surrogate (which no encoder takes: not valid UTF-8) made a '?'."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def check_text(name: str, text, max_chars: int = MAX_TEXT_CHARS, *, allow_blank: bool = False) -> str:
    """A non-empty string within the size limit (not only white space, unless ``allow_blank``: a space
    can be a token); lone surrogates become '?'."""
    if not isinstance(text, str):
        raise ValidationError(f"{name} must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValidationError(f"{name} is too long: {len(text):,} characters (the limit is {max_chars:,})")
    text = well_formed(text)
    if not (text if allow_blank else text.strip()):
        raise ValidationError(f"{name} is empty: type some text first")
    return text


@dataclass(frozen=True)
class Encoded:
    """A text as token ids, cut to fit a limit."""

    ids: tuple[int, ...]  # the ids kept
    dropped: int  # ids left out (from the start with keep='last', from the end with keep='first')

    @property
    def total(self) -> int:
        return len(self.ids) + self.dropped


def encode_text(tokenizer, text: str, *, name: str = "text", limit: int | None = None,
                keep: str = "last") -> Encoded:
    """The token ids of a text (already checked with :func:`check_text`), at most ``limit`` of them:
    the last ones (``keep='last'``: what a model continuing the text needs) or the first ones
    (``keep='first'``: a text read from its beginning). A text that tokenizes to nothing is refused."""
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]]
    if not ids:
        raise ValidationError(f"{name} is empty after tokenization: type some words")
    if limit is None or len(ids) <= limit:
        return Encoded(tuple(ids), 0)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    kept = ids[-limit:] if keep == "last" else ids[:limit]
    return Encoded(tuple(kept), len(ids) - limit)


# ----------------------------------------------------------------------------- request settings


@dataclass(frozen=True)
class Setting:
    """One request setting, defined once: its name, what the page shows (label, help, slider range)
    and what the server accepts (kind, range). Slider sets, API signatures and checks derive from it."""

    name: str
    label: str
    help: str
    kind: str  # 'float', 'int', 'bool' or 'seed'
    default: Any
    lo: float = 0.0  # the range the server accepts (the API may send anything)
    hi: float = 0.0
    lo_open: bool = False
    slider: tuple[float, float, float] | None = None  # (min, max, step) of the page's slider

    def check(self, value, *, slider: bool = False):
        """The valid value, or ValidationError naming the setting. ``slider``: within the page's slider
        range (what an endpoint built from the sliders accepts) rather than the server's wider one."""
        if self.kind == "bool":
            return check_bool(self.name, value)
        if self.kind == "seed":
            return check_seed(value)
        lo, hi, lo_open = (self.slider[0], self.slider[1], False) if slider and self.slider else (
            self.lo, self.hi, self.lo_open)
        return check_number(self.name, value, lo, hi, integer=self.kind == "int", lo_open=lo_open)

    @property
    def python_type(self) -> type:
        return {"float": float, "int": int, "bool": bool, "seed": int}[self.kind]
