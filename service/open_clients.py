"""How many clients this process serves right now: the batcher's signal for skipping the thread hop.

When a worker process serves a single client, nothing can join a batch around its request, so the batcher
runs the call on the event loop instead of handing it to a worker thread and back (a hop that costs a lone
request a noticeable share of its latency; docs/benchmarks.md). Both ports count, since both share the event
loop and the batchers: the HTTP connection guard (service.server.connections) hands over uvicorn's set of
open connections, and the gRPC server counts its calls in flight. Until the HTTP guard has handed its set
over (tests, other ASGI servers), nothing is ever "alone" and the batcher keeps its usual rule. Counting HTTP
requests instead of connections does not work: under load the requests whose bytes arrived together start
one after another, each seeing itself alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from contextlib import contextmanager


class OpenClients:
    def __init__(self) -> None:
        self._http: Sized | None = None
        self._grpc_calls = 0

    def watch_http(self, connections: Sized) -> None:
        """The live set of this process's open HTTP connections (uvicorn's server state)."""
        self._http = connections

    @contextmanager
    def grpc_call(self) -> Iterator[None]:
        self._grpc_calls += 1
        try:
            yield
        finally:
            self._grpc_calls -= 1

    def alone(self) -> bool:
        return self._http is not None and len(self._http) + self._grpc_calls <= 1
