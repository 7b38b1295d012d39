"""One socket write per small response: the status line and headers go out together with the body.

uvicorn writes a response's head as soon as the app sends `http.response.start` and its body with the next
message: two `write()` calls, two TCP segments on a TCP_NODELAY socket, two wake-ups of the client. For a
small answer (a 28x28 PNG in JSON is ~1 kB) the second system call and segment were about a tenth of the
server's CPU per request. `HeldHeadTransport` stands between one request's cycle and the connection's
transport and holds the head back until the first body bytes, then hands both to `writelines` (one
`writev` under uvloop).

Only heads of responses with a Content-Length are held: their body follows at once (Starlette's `Response`
sends both back to back), while a chunked response may stream its first chunk much later. Anything else the
cycle writes (`100 Continue`, chunked heads) goes out at once. Held bytes are flushed before a close and when
the response completes without body bytes (HEAD, 204, 304), so nothing is ever left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, cast


class _Cycle(Protocol):
    """What the transport reads of uvicorn's RequestResponseCycle."""

    transport: asyncio.Transport
    response_started: bool
    response_complete: bool
    chunked_encoding: bool | None
    on_response: Callable[[], None]


def hold_head(cycle: _Cycle) -> None:
    """Route this cycle's writes through a HeldHeadTransport; a held head is sent when the response ends."""
    transport = HeldHeadTransport(cycle.transport, cycle)
    cycle.transport = cast(asyncio.Transport, transport)
    done = cycle.on_response

    def on_response() -> None:
        transport.flush()
        done()

    cycle.on_response = on_response


class HeldHeadTransport:
    """The transport as one response's cycle sees it (uvicorn's cycle uses write, close and is_closing)."""

    __slots__ = ("_cycle", "_head", "_holding", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: _Cycle):
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._holding = True  # until the head is out: at most one head is ever held

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.writelines([head, data])
            return
        cycle = self._cycle
        if (
            self._holding
            and cycle.response_started
            and not cycle.response_complete
            and cycle.chunked_encoding is False  # a Content-Length response: the body follows at once
        ):
            self._holding = False
            self._head = bytes(data)
            return
        if cycle.response_started:
            self._holding = False
        self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (the response completed without body bytes)."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # anything else a cycle might ask of its transport
        return getattr(self._transport, name)
