"""Gradio inputs built from the settings' one definition, whose server-side check names the setting.

Gradio's own Slider check says only "Value 1000 is greater than maximum value 400." and lets NaN or
a string through to fail obscurely; these templates (rendered exactly like the originals) run the
setting's own check (:class:`demo.core.validation.Setting`) and reject wrong types, NaN/inf and
out-of-range values with a message that names the parameter."""

from __future__ import annotations

import gradio as gr
from gradio.helpers import Examples

from demo.core.errors import ValidationError
from demo.core.sampling import DEFAULT_PRESET, PRESETS, SETTINGS, SamplingParams
from demo.core.validation import Setting, check_choice, check_number, quoted
from demo.ui.common import to_gr_error


def _checked(check, value):
    try:
        return check(value)
    except ValidationError as exc:
        raise to_gr_error(exc) from None


class CheckedSlider(gr.Slider):
    """A slider whose value the server checks with its :class:`Setting`, within the slider's range: an
    endpoint built from sliders (``/generate``) accepts what the sliders can show."""

    is_template = True  # rendered by the frontend as a plain slider

    def __init__(self, setting: Setting, *, value=None, label: str | None = None, **kwargs):
        assert setting.slider is not None, f"{setting.name} has no slider range"
        lo, hi, step = setting.slider
        kwargs = {"minimum": lo, "maximum": hi, "step": step, "info": setting.help, **kwargs}
        super().__init__(value=setting.default if value is None else value, label=label or setting.label, **kwargs)
        self.setting = setting

    def get_config(self, cls=None):
        # Gradio sends the page the arguments named in the class's __init__ signature: use Slider's
        # (label, value, step, info, ...), not this narrower one, or the page gets unlabelled sliders.
        return super().get_config(cls or gr.Slider)

    def preprocess(self, payload):
        return _checked(lambda v: self.setting.check(v, slider=True), payload)


class NumberSlider(gr.Slider):
    """A plain slider (a layer, a head, a count) whose server-side check names it: a value that is not a
    finite number gets a sentence, where Gradio's own check fails on a comparison and shows a bare
    "Error". The range is Gradio's check; the handler checks what the value means."""

    is_template = True

    def get_config(self, cls=None):
        return super().get_config(cls or gr.Slider)

    def preprocess(self, payload):
        name = self.label or "the slider"
        return super().preprocess(_checked(lambda v: check_number(name, v, float("-inf"), float("inf")), payload))


class SeedNumber(gr.Number):
    """A seed box: a whole number in [0, 2^32), or -1 / empty for a random seed (passed on as None)."""

    is_template = True

    def __init__(self, setting: Setting, *, label: str | None = None, **kwargs):
        kwargs = {"value": -1, "precision": 0, "info": setting.help, **kwargs}
        super().__init__(label=label or setting.label, **kwargs)
        self.setting = setting

    def get_config(self, cls=None):
        return super().get_config(cls or gr.Number)

    def preprocess(self, payload):
        return _checked(self.setting.check, payload)


class ChoiceDropdown(gr.Dropdown):
    """A single-choice dropdown checked by :func:`demo.core.validation.check_choice`, which quotes at most
    40 characters of a rejected value (Gradio's own check echoes all of it: a 1-MB model name came
    back as a 1-MB error)."""

    is_template = True

    def preprocess(self, payload):
        allowed = [str(value) for _, value in self.choices]
        _checked(lambda v: check_choice(self.label or "the value", v, allowed, exact=True), payload)
        return super().preprocess(payload)


def setting_input(setting: Setting, value=None, label: str | None = None, **kwargs) -> gr.components.Component:
    """The page's input for one setting: a checkbox, a seed box or a checked slider."""
    if setting.kind == "bool":
        return gr.Checkbox(value=setting.default if value is None else value, label=label or setting.label,
                           info=setting.help, **kwargs)
    if setting.kind == "seed":
        return SeedNumber(setting, label=label, **kwargs)
    return CheckedSlider(setting, value=value, label=label, **kwargs)


def sampling_inputs(defaults: SamplingParams = PRESETS[DEFAULT_PRESET], labels: dict[str, str] | None = None
                    ) -> dict[str, gr.components.Component]:
    """One input per sampling setting, in definition order (``labels`` renames some, so two sets on
    one page stay distinguishable)."""
    labels = labels or {}
    return {s.name: setting_input(s, getattr(defaults, s.name), labels.get(s.name)) for s in SETTINGS}


def preset_radio(**kwargs) -> gr.Radio:
    return gr.Radio(list(PRESETS), value=DEFAULT_PRESET, label="Preset", info="Sets the sliders below", **kwargs)


PRESET_TARGETS = [s.name for s in SETTINGS if s.kind != "seed"]  # what a preset sets (it keeps the seed)


def preset_values(name):
    """The values a preset gives the inputs named in :data:`PRESET_TARGETS`, in that order; an unknown
    preset changes none of them (one ``gr.skip()`` skips every output)."""
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        return gr.skip()
    return [getattr(preset, n) for n in PRESET_TARGETS]


def examples(samples: list, **kwargs) -> Examples:
    """Gradio's examples, whose click (a private event any client can send) takes only the index of an
    example shown: anything else gets a sentence, not Gradio's bare error."""
    made = gr.Examples(samples, **kwargs)
    dataset, count = made.dataset, len(samples)
    preprocess = dataset.preprocess

    def checked(payload):
        if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < count:
            raise gr.Error(f"choose one of the {count} examples shown", print_exception=False)
        return preprocess(payload)

    dataset.preprocess = checked  # type: ignore[method-assign]
    return made


def _short(block, preprocess, payload):
    try:
        return preprocess(payload)
    except gr.Error as exc:
        if len(str(exc.message)) <= 200:
            raise
        raise gr.Error(f"{block.label or 'the value'} must be one of the choices shown; got {quoted(payload)}",
                       print_exception=False) from None


class ShortErrorRadio(gr.Radio):
    """A Radio whose refusal of a value not among its choices is a short sentence (Gradio's own quotes
    the whole value). Rendered as a plain Radio."""

    is_template = True

    def preprocess(self, payload):
        return _short(self, super().preprocess, payload)


class ShortErrorDropdown(gr.Dropdown):
    """A Dropdown like :class:`ShortErrorRadio`."""

    is_template = True

    def preprocess(self, payload):
        return _short(self, super().preprocess, payload)


def short_choice_errors(blocks: gr.Blocks) -> int:
    """Make every stock Radio and Dropdown of ``blocks`` refuse a value that is not one of its choices
    with a short sentence: Gradio's own check quotes the whole value (a private event sent with a
    megabyte of text would get a megabyte back). Each becomes the subclass above, so a copy Gradio makes
    for a session when an event updates it is one too. Returns how many it changed."""
    changed = 0
    for block in blocks.blocks.values():
        if type(block) is gr.Radio:
            block.__class__ = ShortErrorRadio
        elif type(block) is gr.Dropdown:
            block.__class__ = ShortErrorDropdown
        else:
            continue
        changed += 1
    return changed
