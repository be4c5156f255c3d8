"""A bound on the size of a request's body, for every route of the server (ASGI middleware).

The longest thing the page sends is a text of at most 50,000 characters (``MAX_TEXT_CHARS``), a
few hundred kilobytes as JSON even with every character escaped; a 100 MB body is refused before
it is read, so it costs the server no memory. Gradio's own ``max_file_size`` bounds uploads only."""

from __future__ import annotations

import json

MAX_BODY_BYTES = 2_000_000


class BodyLimit:
    """Refuse (413) a request whose body is larger than ``max_bytes``: at once when its Content-Length
    says so, else (a chunked body) as soon as the bytes read pass the bound."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_large = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            too_large = True  # a Content-Length that is not a number: refused like an oversize one
        if too_large:
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"the request is too large: at most {self.max_bytes:,} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    """Raised in the app's ``receive`` once a chunked body passes the bound."""
