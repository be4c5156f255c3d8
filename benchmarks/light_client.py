"""A light client for the benchmarks: the app's plain HTTP and SSE API through one httpx connection.

``gradio_client`` makes a new HTTP client per request and polls its job every millisecond: on a
2-core machine that spends the server's cores on the client. This one sends a request with
``POST /gradio_api/call/<name>`` and reads the answer's event stream as it arrives, so its own CPU
cost is a few JSON decodes per update.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx


class EndpointError(RuntimeError):
    """The server answered a request with an error event."""


class LightClient:
    def __init__(self, url: str, timeout_s: float = 600):
        self.url = url if url.endswith("/") else url + "/"
        self.http = httpx.Client(timeout=timeout_s)
        info = self.http.get(self.url + "gradio_api/info").json()
        self.parameters = {name: endpoint["parameters"] for name, endpoint in info["named_endpoints"].items()}

    def data(self, name: str, values: dict[str, Any]) -> list:
        """The positional data of /<name>: ``values`` by parameter name, the endpoint's defaults elsewhere."""
        params = self.parameters[f"/{name}"]
        unknown = set(values) - {p["parameter_name"] for p in params}
        if unknown:
            raise ValueError(f"/{name} has no parameter {sorted(unknown)}")
        return [values.get(p["parameter_name"], p.get("parameter_default")) for p in params]

    def stream(self, name: str, **values) -> Iterator[tuple[float, list]]:
        """(perf_counter time, output data) of each update of /<name>, the last one included; raises
        :class:`EndpointError` on an error event."""
        event = self.http.post(f"{self.url}gradio_api/call/{name}", json={"data": self.data(name, values)})
        event.raise_for_status()
        event_id = event.json()["event_id"]
        with self.http.stream("GET", f"{self.url}gradio_api/call/{name}/{event_id}") as response:
            kind = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    if kind == "error":
                        raise EndpointError(f"/{name}: {line[5:300].strip()}")
                    if kind in ("generating", "complete"):
                        yield time.perf_counter(), json.loads(line[5:])
                    if kind == "complete":
                        return

    def call(self, name: str, **values) -> list:
        """The final output data of /<name>."""
        updates = [data for _, data in self.stream(name, **values)]
        return updates[-1] if updates else []

    def close(self) -> None:
        self.http.close()
