"""Fair, bounded admission to Gradio's queue: no visitor can lock out the others.

Gradio's queue takes every request until it is full and starts them first come, first served within
each concurrency group, so one client sending many requests (from one session, or from many fresh
sessions) fills the queue and makes everyone else wait behind it. :func:`install` changes two things
on a Blocks' queue:

* **Admission.** A request is refused, with a sentence, when its visitor already has
  ``session_limit`` requests waiting or running (a browser tab or an API client's session), or its
  client address has ``address_limit`` (a whole class behind one school router shares an address, so
  that limit is larger). Stops are counted apart, with a small cap of their own (``STOPS_PER_SESSION``
  waiting or running a visitor: one Stop stops all that visitor started before it, so more add nothing),
  so a flood of Stops cannot fill the queue and work never keeps a visitor from stopping it: work is
  refused once the operator's queue size is reached, and Stops have ``STOP_RESERVE`` places beyond it.
* **Turns.** When a concurrency group has room, it starts the waiting request of the visitor whose
  turn it is instead of the oldest request: the address with the fewest requests running in that
  group, and among equals the one served longest ago (round robin); within the address, the session
  the same way; within the session, the oldest request. And one address never takes more than three quarters of a
  group's slots (the decode loop's rows, say) when the group has four or more: the rest stay free for
  other addresses, so a newcomer starts at once even while one client floods the server.

The client address is the connection's, or behind proxies that set ``X-Forwarded-For`` (a Hugging
Face Space; ``forwarded_for``) the rightmost public address in that header: each proxy appends the
address it saw, so entries to the right of it are the proxies' own private hops and entries to the
left of it are whatever the client claimed. When every entry is private (a school network behind a
local proxy), the rightmost one. An IPv6 client counts by its /64 network: one home or phone line
gets a whole /64, so a client could otherwise take a fresh address for every request.

It reads Gradio's queue internals (``event_queue_per_concurrency_id``, ``active_jobs``, each event's
``request`` and ``session_hash``), which the tested Gradio release has; where they are missing,
:func:`install` leaves the queue as it is and logs why.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("gpt_explorer")
EXEMPT_GROUPS = frozenset({"stop"})  # a Stop only notes a request: counted apart from work, capped on its own
STOPS_PER_SESSION = 4
STOP_RESERVE = 32  # places in the queue beyond its size that only Stops may take
MAX_REMEMBERED = 10_000  # turns remembered (address or session, per group); a forgotten one counts as never served


def client_address(request: Any, forwarded_for: bool) -> str:
    """The client's address (an IPv6 one as its /64 network): behind trusted proxies the rightmost public
    X-Forwarded-For entry (else the rightmost entry), otherwise the connection's."""
    if forwarded_for:
        headers = getattr(request, "headers", None) or {}
        forwarded = headers.get("x-forwarded-for", "") if hasattr(headers, "get") else ""
        entries = [e.strip() for e in forwarded.split(",") if e.strip()]
        for entry in reversed(entries):
            try:
                if ipaddress.ip_address(entry).is_global:
                    return _as_visitor(entry)
            except ValueError:  # not an address: a proxy's name, or garbage a client sent
                continue
        if entries:
            return _as_visitor(entries[-1])
    client = getattr(request, "client", None)
    return _as_visitor(str(getattr(client, "host", None) or "unknown"))


def _as_visitor(address: str) -> str:
    """An address as the admission counts it: an IPv6 one by its /64 network (an IPv4 one written in
    IPv6 as itself), anything else as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


def group_share(limit: int | None) -> int | None:
    """The most slots of a group of ``limit`` that one address may hold: three quarters from 4 slots up
    (a quarter kept for other addresses), every slot below that (one slot kept free would leave a lone
    visitor waiting for nothing)."""
    if limit is None:
        return None
    return limit - limit // 4 if limit >= 4 else limit


class FairAdmission:
    def __init__(self, queue: Any, session_limit: int, address_limit: int, forwarded_for: bool = False,
                 work_limit: int | None = None):
        self.queue, self.session_limit, self.address_limit = queue, session_limit, address_limit
        self.work_limit = work_limit  # waiting requests beyond which work (not a Stop) is refused
        self.forwarded_for = forwarded_for
        self.refused = 0
        self._started = 0  # a counter: when each address and session last got a turn, per group
        self._last_turn: dict[tuple[str, Any], int] = {}

    def visitor(self, event: Any) -> tuple[str, str]:
        return client_address(getattr(event, "request", None), self.forwarded_for), str(event.session_hash)

    def _running(self) -> Iterable[Any]:
        for job in self.queue.active_jobs:
            if job is not None:
                yield from job

    def _waiting(self) -> Iterable[Any]:
        for event_queue in self.queue.event_queue_per_concurrency_id.values():
            yield from event_queue.queue

    # ------------------------------------------------------------------------- admission

    def check(self, body: Any, request: Any) -> str | None:
        """Why this request is refused, or None. Counts what its visitor has waiting or running."""
        fn = self.queue.blocks.fns.get(getattr(body, "fn_index", None))
        if fn is None:
            return None
        stop = getattr(fn, "concurrency_id", None) in EXEMPT_GROUPS
        if not stop and self.work_limit is not None and len(self.queue) >= self.work_limit:
            return f"Queue is full: {len(self.queue)} requests are waiting on this server. Try again in a moment."
        address, session = client_address(request, self.forwarded_for), getattr(body, "session_hash", None)
        per_address = per_session = 0
        for event in (*self._running(), *self._waiting()):
            if (event.concurrency_id in EXEMPT_GROUPS) != stop:  # Stops and work are counted apart
                continue
            a, s = self.visitor(event)
            per_address += a == address
            per_session += session is not None and a == address and s == session
        if stop and per_session >= STOPS_PER_SESSION:
            return (f"You already have {per_session} Stops waiting on this server: each stops everything you "
                    "started before it, so wait for them.")
        if per_session >= self.session_limit:
            return (f"You already have {per_session} requests waiting or running on this server (the most one "
                    "page or client may have): wait for them to finish, then try again.")
        if per_address >= self.address_limit:
            return (f"Your network already has {per_address} requests waiting or running on this server (the "
                    "most one address may have): wait for them to finish, then try again.")
        return None

    async def push(self, body: Any, request: Any, username: str | None, _push: Any = None):
        why = self.check(body, request)
        if why is not None:
            self.refused += 1
            return False, why, "queue_full"
        return await _push(body=body, request=request, username=username)

    # ------------------------------------------------------------------------- turns

    def get_events(self, _get_events: Any = None):
        """Gradio's ``Queue.get_events``, choosing by visitor instead of by age (see the module)."""
        groups = list(self.queue.event_queue_per_concurrency_id.items())
        random.shuffle(groups)  # as Gradio does: no group goes first every time
        running = list(self._running())
        for concurrency_id, event_queue in groups:
            waiting = event_queue.queue
            limit = event_queue.concurrency_limit
            if not waiting or (limit is not None and event_queue.current_concurrency >= limit):
                continue
            if waiting[0].fn.batch:  # batched functions: Gradio's own choice (the app defines none)
                return _get_events()
            mine = [self.visitor(e) for e in running if e.concurrency_id == concurrency_id]
            by_address, by_session = Counter(a for a, _ in mine), Counter(mine)
            share = group_share(limit)
            turn = self._last_turn
            choices = []
            for i, event in enumerate(waiting):
                visitor = self.visitor(event)
                address = visitor[0]
                if share is None or by_address[address] < share:
                    choices.append(((by_address[address], turn.get((concurrency_id, address), -1),
                                     by_session[visitor], turn.get((concurrency_id, visitor), -1), i), visitor, event))
            if not choices:
                continue  # every waiting request's address holds its share of this group
            _, visitor, chosen = min(choices, key=lambda c: c[0])
            waiting.remove(chosen)
            self._started += 1
            turn[(concurrency_id, visitor[0])] = turn[(concurrency_id, visitor)] = self._started
            if len(turn) > 4 * MAX_REMEMBERED:  # forget the oldest turns: a bounded table
                for key in sorted(turn, key=turn.__getitem__)[:len(turn) - MAX_REMEMBERED]:
                    del turn[key]
            return [chosen], False, concurrency_id
        return None


def install(demo: Any, session_limit: int, address_limit: int, forwarded_for: bool = False) -> FairAdmission | None:
    """Put :class:`FairAdmission` on ``demo``'s queue (after ``demo.queue(...)``). None, with a log
    line, when this Gradio release's queue lacks what it needs."""
    queue = getattr(demo, "_queue", None)
    needed = ("push", "get_events", "active_jobs", "event_queue_per_concurrency_id", "blocks")
    if queue is None or not all(hasattr(queue, name) for name in needed):
        log.warning("this Gradio release's queue is not the one fair admission knows: first come, first served")
        return None
    work_limit = queue.max_size
    if work_limit is not None:  # Gradio refuses anything past max_size: Stops get places beyond the work's
        queue.max_size = work_limit + STOP_RESERVE
    fair = FairAdmission(queue, session_limit, address_limit, forwarded_for, work_limit)
    original_push, original_get_events = queue.push, queue.get_events

    async def push(body, request, username):
        return await fair.push(body, request, username, _push=original_push)

    queue.push = push
    queue.get_events = lambda: fair.get_events(_get_events=original_get_events)
    return fair
