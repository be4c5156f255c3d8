"""How often Gradio's queue wakes up to look for work: often while nothing runs, seldom while a model works.

Gradio's queue has no wake-up call: a loop looks for a request to start every ``sleep_when_free``
seconds (1 ms by default), and another sends progress bars' updates every
``progress_update_sleep_when_free`` (10 ms). Each wake-up takes Python's lock, and on a small CPU
machine a core, from the model: a forward pass runs on every core, so it waits for a preempted
thread, and a small model's forward pass is mostly Python. On the 2-core machine of the README's
*Measured speed*, one run that took turns between the settings had a served stream of the
GPT-2-small-size model at 84 % of raw ``generate`` when the queue polled every 5 ms (and progress
every 10 ms), and at 98 % when it polled every 20 ms (progress every 100 ms); the bundled model went
from 79 % to 85 %.

So :func:`pace` makes the queue poll every :data:`IDLE_POLL_S` while no event runs (a request to an
idle server starts within 5 ms) and every :data:`BUSY_POLL_S` while any runs (a request that comes while
others stream starts up to 20 ms later, beside a first token of hundreds of milliseconds there), and
sends progress updates every :data:`PROGRESS_POLL_S` (ten a second, as smooth as a progress bar needs).

These are private attributes of the tested Gradio release; where they are missing, :func:`pace`
leaves the queue as it is and logs why (the app is only slower).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gpt_explorer")
IDLE_POLL_S = 0.005
BUSY_POLL_S = 0.02
PROGRESS_POLL_S = 0.1


def _poll_interval(queue: Any) -> float:
    busy = any(job is not None for job in getattr(queue, "active_jobs", ()))
    return BUSY_POLL_S if busy else IDLE_POLL_S


def pace(demo: Any) -> bool:
    """Set the polling of ``demo``'s queue (see the module's text); whether it could."""
    queue: Any = getattr(demo, "_queue", None)
    if not (isinstance(getattr(queue, "sleep_when_free", None), float)
            and isinstance(getattr(queue, "progress_update_sleep_when_free", None), float)
            and isinstance(getattr(queue, "active_jobs", None), list)):
        log.warning("Gradio's queue has no polling intervals this app knows: it polls at Gradio's own pace")
        return False
    # Gradio's loop reads the attribute at every turn: a property of a subclass made for this queue
    # answers it (instances keep their data; setting it, as Gradio's constructor does, changes nothing).
    paced = type(f"Paced{type(queue).__name__}", (type(queue),), {
        "sleep_when_free": property(_poll_interval, lambda self, value: None)})
    queue.__dict__.pop("sleep_when_free", None)
    queue.__class__ = paced
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_POLL_S)
    return True
