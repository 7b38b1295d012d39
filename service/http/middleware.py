"""Pure ASGI middleware: request ids, access log and metrics, client disconnects; the request body size cap.

Pure ASGI (not BaseHTTPMiddleware) so bodies stream through untouched and the cost per request stays small.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.logs import request_id
from service.metrics import Metrics

log = logging.getLogger("service.access")

_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}\Z")  # \Z: `$` would accept a trailing newline

# Request ids: a random per-process prefix and a counter, unique across workers and restarts, as long as a
# uuid4 hex and about 10x cheaper to make (uuid4 was ~2% of a small request's CPU).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


# The access line: method, path, status, milliseconds. Its record is made directly, not by `log.info`, which
# walks the stack to find the caller's file and line, which no format of ours shows (a third of the line's
# Python calls).
ACCESS_LINE = "%s %s %d %.1fms"


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header, `name` in lower case (ASGI servers send names lower-cased): what
    Starlette's `Headers(scope=scope).get` answers, undecoded, without building the mapping per lookup."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


# nginx's status for "client closed the request": logged and counted, never sent (there is no one to send to).
CLIENT_CLOSED = 499


class RequestContextMiddleware:
    """Honours a sane `X-Request-ID` or makes one, returns it, logs one line and counts every request.

    Client disconnects: one that happens while the body is read (Starlette's `ClientDisconnect`) ends the
    request quietly as 499; one that happens after the body was read, while the request waits for inference,
    cancels the handler, which cancels its queued batcher jobs so they never run.

    The task that listens for that disconnect is started from the event loop's next round after the body,
    not at once: a request that never waits (a lone decode run on the event loop, answered in the same step)
    is over before that round and pays for a cancelled callback instead of a task made, scheduled and
    cancelled. A request that waits lets the loop run that round first, so the listener is up while it waits.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        rid = given.decode("ascii") if given is not None and _VALID_ID.match(given) else new_request_id()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        responding = False
        gone = False
        task = asyncio.current_task()
        watcher: asyncio.Task[Message] | None = None
        starting: asyncio.Handle | None = None  # the watcher's start, due in the loop's next round

        async def send_with_id(message: Message) -> None:
            nonlocal status, responding
            if message["type"] == "http.response.start":
                status, responding = message["status"], True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        async def watch() -> Message:
            # The next message after the body is http.disconnect: when the client goes, or (for every ASGI
            # server) once the response is complete, which is not a disconnect worth acting on.
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not responding and task is not None:
                gone = True
                task.cancel()
            return message

        def start_watching() -> None:
            nonlocal watcher, starting
            if starting is not None:
                starting.cancel()
                starting = None
                watcher = asyncio.get_running_loop().create_task(watch())

        async def receive_watched() -> Message:
            nonlocal gone, starting
            if starting is not None or watcher is not None:
                # The app listens for a disconnect itself: share the watcher's answer (one receive at a time).
                start_watching()
                assert watcher is not None
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            elif not message.get("more_body", False):
                starting = asyncio.get_running_loop().call_soon(start_watching)
            return message

        try:
            await self.app(scope, receive_watched, send_with_id)
        except ClientDisconnect:
            status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if not gone or task is None:
                raise
            task.uncancel()  # our own cancellation: the request is over, the server is not
            status = CLIENT_CLOSED
        finally:
            if starting is not None:
                starting.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
            if gone and not responding:
                status = CLIENT_CLOSED
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(_route_label(scope), scope["method"], status, elapsed)
            if log.isEnabledFor(logging.INFO):
                line = (scope["method"], scope["path"], status, elapsed * 1000)
                log.handle(
                    log.makeRecord(log.name, logging.INFO, __file__, 0, ACCESS_LINE, line, None, "access")
                )
            request_id.reset(token)


def _route_label(scope: Scope) -> str:
    # The route template, not the raw path, so unknown URLs cannot blow up the metric's label set.
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return path or "/static"


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: at once on Content-Length, and while reading a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            # Raised while reading the body somewhere the app's handlers did not see it.
            if started:
                raise
            await self._reject(scope, receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = self._error()
        response = JSONResponse(err.body(), status_code=err.status, headers={"Connection": "close"})
        await response(scope, receive, send)
