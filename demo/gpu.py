"""Run GPU work under ZeroGPU's ``spaces.GPU`` when the app is hosted on such a Space."""

from __future__ import annotations

import os


def gpu(fn):
    """``spaces.GPU(fn)`` on a ZeroGPU Space (the ``spaces`` package present and SPACES_ZERO_GPU set),
    else ``fn`` unchanged. ``spaces.GPU`` keeps generator functions streaming."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
