"""Run GPU work under ZeroGPU's ``spaces.GPU`` when the app is hosted on such a Space."""

from __future__ import annotations


def on_gpu(fn, zero_gpu: bool):
    """``spaces.GPU(fn)`` on a ZeroGPU Space (``zero_gpu`` set and the ``spaces`` package present),
    else ``fn`` unchanged. ``spaces.GPU`` keeps generator functions streaming."""
    if not zero_gpu:
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
