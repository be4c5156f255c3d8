"""Gradio inputs whose server-side check names the setting and explains the problem.

Gradio's own Slider check says only "Value 1000 is greater than maximum value 400." and lets NaN or
a string through to fail obscurely; these templates (rendered exactly like the originals) reject
wrong types, NaN/inf and out-of-range values with a message that names the parameter."""

from __future__ import annotations

import gradio as gr

from .errors import ValidationError
from .sampling import check_number, check_seed

# Every event that runs the model shares one concurrency group: one model on one device. The Generate
# events set the group's limit; the others join it without a limit of their own.
MODEL_QUEUE = dict(concurrency_id="model", concurrency_limit=None)


class CheckedSlider(gr.Slider):
    is_template = True  # rendered by the frontend as a plain slider

    def __init__(self, minimum: float, maximum: float, *, name: str, integer: bool = False, **kwargs):
        super().__init__(minimum, maximum, **kwargs)
        self.param_name, self.integer = name, integer

    def get_config(self, cls=None):
        # Gradio sends the page the arguments named in the class's __init__ signature: use Slider's
        # (label, value, step, info, ...), not this narrower one, or the page gets unlabelled sliders.
        return super().get_config(cls or gr.Slider)

    def preprocess(self, payload):
        try:
            return check_number(self.param_name, payload, self.minimum, self.maximum, integer=self.integer)
        except ValidationError as exc:
            raise gr.Error(str(exc), print_exception=False) from None


class SeedNumber(gr.Number):
    """A seed box: a whole number in [0, 2^32), or -1 / empty for a random seed (passed on as None)."""

    is_template = True

    def preprocess(self, payload):
        try:
            return check_seed(payload)
        except ValidationError as exc:
            raise gr.Error(str(exc), print_exception=False) from None


class ChoiceDropdown(gr.Dropdown):
    """A single-choice dropdown whose server-side check quotes at most 40 characters of a rejected
    value: Gradio's own check echoes all of it (a 1-MB model name came back as a 1-MB error)."""

    is_template = True

    def preprocess(self, payload):
        allowed = [value for _, value in self.choices]
        if not isinstance(payload, str) or payload not in allowed:
            shown = repr(payload) if len(repr(payload)) <= 40 else repr(payload)[:40] + "…"
            raise gr.Error(f"{self.label or 'the value'} must be one of {', '.join(map(str, allowed))}; got {shown}",
                           print_exception=False)
        return super().preprocess(payload)
