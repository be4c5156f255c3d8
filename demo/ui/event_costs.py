"""Work Gradio does around every event call that this app has no use for.

Around each call of an event handler (every streamed update is one) Gradio switches matplotlib's
backend to "agg" and back, so that a figure drawn in a handler never opens a window. To do it, it
imports matplotlib twice. This app draws with plotly and does not install matplotlib, and a failed
import is not remembered: each one searches every entry of ``sys.path`` again (a few file-system
calls each), taking Python's lock from the decode loop at every update.

:func:`skip_matplotlib_switch` replaces the switch with one that does nothing, only where matplotlib
cannot be imported, where Gradio's switch does nothing either. Where matplotlib is installed (a Space
that adds it), or where a Gradio release has no such switch, nothing changes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import gradio.utils

log = logging.getLogger("gpt_explorer")
SWITCH = "MatplotlibBackendMananger"  # Gradio's name, spelling included


def skip_matplotlib_switch() -> bool:
    """Make Gradio's per-call matplotlib switch a no-op where matplotlib is not installed; whether it did."""
    if importlib.util.find_spec("matplotlib") is not None:
        return False
    if not hasattr(gradio.utils, SWITCH):
        log.info("Gradio has no matplotlib switch this app knows: left as it is")
        return False
    setattr(gradio.utils, SWITCH, contextlib.nullcontext)
    return True
