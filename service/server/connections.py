"""The HTTP connection guard: uvicorn's httptools protocol with the timeouts and caps it lacks.

uvicorn bounds neither a connection that never sends a request (its keep-alive timer starts only after a
first response), nor the size or arrival time of request headers (httptools accumulates a header of any size,
and uvicorn's `h11_max_incomplete_event_size` applies only to the slower h11 parser), nor a body that stops
arriving, nor the number of open connections (`limit_concurrency` answers 503 to requests but still accepts
and keeps every socket, so idle sockets exhaust file descriptors and then every client is locked out). This
protocol adds, per connection:

- idle timeout: a connection with no request in progress (new, or between keep-alive requests) is closed
  `idle_timeout_s` after it went idle, whatever it trickles in between requests;
- header timeout and size cap: from a request's first byte its headers must be complete within
  `header_timeout_s` (408) and `max_header_bytes` (431), checked on every read before the parser sees more;
- body stall timeout: a body that sends nothing for `body_timeout_s` (while the app is waiting to read it) is
  answered 408 and the connection closed; the app sees a client disconnect;
- send stall timeout: a client that stops reading its response (the transport's write buffer stays above
  its high-water mark for `send_timeout_s`) is cut off, so slow readers cannot hold connections (and the
  responses buffered for them) forever;
- open-connection cap: at `max_connections` a new connection closes the connection that has been idle the
  longest (nginx does the same with idle keep-alive connections), or, when none is idle, is answered 503
  and closed. With the idle, header and body timeouts every connection that is not idle ends on its own, so
  sockets that never send anything cannot lock real clients out.

Every refusal is counted and logged as a warning: the first of each kind at once, then one line per kind
and `LOG_INTERVAL_S` with the count.
The process's open-file limit is raised to fit the cap at startup (`raise_fd_limit`), together with the gRPC
port's own cap (`grpc_max_connections`, enforced by grpcio): the two split the budget (`connection_shares`),
so sockets held on one port cannot exhaust the descriptors the other needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings
from service.errors import ErrorType, error_body
from service.server.response_writes import hold_head
from service.state import LIFESPAN_KEY

log = logging.getLogger(__name__)

# File descriptors the process needs besides client sockets: model files, onnxruntime and CUDA libraries,
# thread-pool pipes, the listening socket, logs.
FD_HEADROOM = 256
LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout_s: float
    header_timeout_s: float
    max_header_bytes: int
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            idle_timeout_s=settings.idle_timeout_s,
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            body_timeout_s=settings.body_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            max_connections=connection_shares(settings, fd_budget())[0],
        )


# --- file descriptors ---------------------------------------------------------------------------------------


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit when it cannot hold max_connections sockets plus the
    process's own files (the soft limit is often 1024). Logs what it did, and a warning when even the hard
    limit is too low (the connection cap then shrinks to fit)."""
    try:
        import resource
    except ImportError:  # Windows: no rlimits; the cap still applies
        return
    needed = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard != resource.RLIM_INFINITY else needed
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info(
                "open-file limit raised from %d to %d (max_connections=%d)", soft, target, max_connections
            )
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    if (budget := fd_budget()) < max_connections:
        log.warning(
            "open-file limit allows only %d connections (hard limit %d minus %d for the process's own "
            "files); max_connections=%d is capped to that", budget, hard, FD_HEADROOM, max_connections,
        )  # fmt: skip


def connection_shares(settings: Settings, budget: int) -> tuple[int, int]:
    """(HTTP, gRPC) connection caps within `budget` client sockets: `max_connections` and
    `grpc_max_connections` (0 when gRPC is off) when both fit, else each shrunk in proportion, so that
    neither port can take the descriptors the other needs."""
    http, grpc = settings.max_connections, settings.grpc_max_connections if settings.grpc_port else 0
    if http + grpc <= budget:
        return http, grpc
    return max(16, budget * http // (http + grpc)), max(16, budget * grpc // (http + grpc)) if grpc else 0


def fd_budget() -> int:
    """Client sockets the current soft open-file limit leaves room for."""
    try:
        import resource
    except ImportError:
        return 1 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, soft - FD_HEADROOM)


# --- per-server bookkeeping ---------------------------------------------------------------------------------


class _Guard:
    """What all connections of one server share: the idle connections in the order they went idle, and the
    rate-limited log of refusals."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any], limits: ConnectionLimits):
        self.loop = loop
        self.connections = connections  # uvicorn's set of open connections
        self.limits = limits
        self.idle: OrderedDict[GuardedHttpToolsProtocol, None] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.last_log: dict[str, float] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}

    def mark_idle(self, conn: GuardedHttpToolsProtocol) -> None:
        self.idle[conn] = None
        self.idle.move_to_end(conn)

    def mark_busy(self, conn: GuardedHttpToolsProtocol) -> None:
        self.idle.pop(conn, None)

    def evict_idle(self) -> bool:
        """Close the connection idle the longest; False when none is idle."""
        while self.idle:
            conn, _ = self.idle.popitem(last=False)
            if not conn.transport.is_closing():
                conn.transport.close()
                self.note("closed idle to admit a new one")
                return True
        return False

    def note(self, what: str) -> None:
        """Count one refusal; each kind is logged at once, then at most once per LOG_INTERVAL_S."""
        self.counts[what] += 1
        since = self.loop.time() - self.last_log.get(what, -math.inf)
        if since >= LOG_INTERVAL_S:
            self.flush(what)
        elif what not in self.timers:
            self.timers[what] = self.loop.call_later(LOG_INTERVAL_S - since, self.flush, what)

    def flush(self, what: str) -> None:
        self.timers.pop(what, None)
        if count := self.counts.pop(what, 0):
            log.warning(
                "shedding connections (cap %d, %d open): %s: %d", self.limits.max_connections,
                len(self.connections), what, count,
            )  # fmt: skip
            self.last_log[what] = self.loop.time()


_guards: weakref.WeakKeyDictionary[Any, _Guard] = weakref.WeakKeyDictionary()


class _DropParserWarnings(logging.Filter):
    """uvicorn logs a warning for every malformed request before answering it; the guard counts them in
    its rate-limited line instead, so a client cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Invalid HTTP request received."


_drop_parser_warnings = _DropParserWarnings()


def _guard_for(server_state: Any, loop: asyncio.AbstractEventLoop, app_state: dict[str, Any]) -> _Guard:
    """The guard of one server, made at its first connection from the app's settings, which the lifespan
    hands over in its state (uvicorn passes that state to every connection's protocol)."""
    guard = _guards.get(server_state)
    if guard is None:
        service = app_state.get(LIFESPAN_KEY)
        if service is None:
            raise RuntimeError(
                "GuardedHttpToolsProtocol serves service.main's app, whose lifespan hands over its settings"
            )
        limits = ConnectionLimits.from_settings(service.settings)
        guard = _guards[server_state] = _Guard(loop, server_state.connections, limits)
        service.clients.watch_http(server_state.connections)  # a lone client's calls skip the thread hop
    return guard


def _error_response(status: int, reason: str, error_type: ErrorType, message: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(message, error_type)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{extra}connection: close\r\n\r\n"
    )
    return head.encode() + body


# --- the protocol -------------------------------------------------------------------------------------------


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with idle, header and body timeouts, a header size cap and a cap on open
    connections (see the module docstring). Pass it as uvicorn's `http=`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = _guard_for(self.server_state, self.loop, self.app_state)
        self.limits = self.guard.limits
        self.timeout_keep_alive = self.limits.idle_timeout_s  # type: ignore[assignment]
        if _drop_parser_warnings not in self.logger.filters:
            self.logger.addFilter(_drop_parser_warnings)
        self._refused = False
        self._in_headers = False  # a request has begun and its headers are not complete
        self._header_bytes = 0
        self._body_pending = False  # headers complete, body not yet
        self._deadline: asyncio.TimerHandle | None = None
        # While the parser runs, a deadline is noted here and armed once the bytes in hand are parsed: a
        # request that arrives in one read sets and cancels its header and body deadlines without a timer.
        self._parsing = False
        self._due: tuple[float, Any] | None = None
        self._send_deadline: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._idle_since = 0.0

    # --- connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self.guard.evict_idle():
            self._refused = True
            self.transport = transport
            self.guard.note("refused at the cap (none idle)")
            message = "too many open connections; retry shortly"
            transport.write(
                _error_response(
                    503, "Service Unavailable", ErrorType.overloaded, message, "retry-after: 1\r\n"
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self._go_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._cancel_send_deadline()
        if self._refused:
            return
        self.guard.mark_busy(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        self.guard.mark_busy(self)
        self._last_read = self.loop.time()
        self._parsing = True
        try:
            super().data_received(data)  # parser callbacks below run from here
        finally:
            self._parsing = False
            due, self._due = self._due, None
        if self.transport.is_closing():
            return
        if due is not None:
            self._deadline = self.loop.call_later(*due)
        if self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._reject(
                    431, "Request Header Fields Too Large", ErrorType.payload_too_large,
                    f"request headers exceed {self.limits.max_header_bytes} bytes", "headers too large",
                )  # fmt: skip
        elif not self._body_pending and self.timeout_keep_alive_task is None and self._between_requests():
            self._go_idle(keep_since=True)  # bytes between requests (e.g. stray CRLFs) do not reset the clock

    def send_400_response(self, msg: str) -> None:
        """A request the parser rejects (bad syntax, control characters in a header): 400 in the service's
        error shape, counted in the rate-limited log instead of uvicorn's warning line per request."""
        self.transport.write(
            _error_response(400, "Bad Request", ErrorType.invalid_input, "malformed HTTP request")
        )
        self.transport.close()
        self.guard.note("malformed requests (400)")

    def _unsupported_upgrade_warning(self) -> None:
        # WebSockets are off (no route uses them); the request is answered as plain HTTP. Counted in the
        # rate-limited line rather than uvicorn's two warnings per request.
        self.guard.note("upgrade requests answered as HTTP")

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.guard.mark_busy(self)
        self._in_headers = True
        self._header_bytes = 0
        self._arm(self.limits.header_timeout_s, self._on_header_timeout)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_deadline()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:  # made for this request, not yet running
            hold_head(self.cycle)  # its head and body go out in one write
        self._body_pending = True
        self._arm(self.limits.body_timeout_s, self._on_body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_pending = False
        self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn armed its keep-alive timer: we are idle
            self._idle_since = self.loop.time()
            self.guard.mark_idle(self)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.limits.send_timeout_s, self._on_send_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_deadline()

    # --- timers ---

    def _cancel_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _on_send_timeout(self) -> None:
        """The client took nothing of its response for send_timeout_s: drop the connection (the app's
        pending send returns as for any disconnect) and the buffered bytes with it."""
        self._send_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.abort()
        self.guard.note("stopped reading responses")

    def _go_idle(self, keep_since: bool = False) -> None:
        now = self.loop.time()
        if not keep_since:
            self._idle_since = now
        remaining = max(0.0, self.limits.idle_timeout_s - (now - self._idle_since))
        self.timeout_keep_alive_task = self.loop.call_later(remaining, self.timeout_keep_alive_handler)
        self.guard.mark_idle(self)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_deadline()
        if self._parsing:
            self._due = (delay, callback)  # armed by data_received, unless the parser cancels it first
        else:
            self._deadline = self.loop.call_later(delay, callback)

    def _cancel_deadline(self) -> None:
        self._due = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_header_timeout(self) -> None:
        self._deadline = None
        if self._in_headers and not self.transport.is_closing():
            self._reject(
                408, "Request Timeout", ErrorType.timeout,
                f"request headers not received within {self.limits.header_timeout_s:g}s", "slow headers",
            )  # fmt: skip

    def _on_body_timeout(self) -> None:
        self._deadline = None
        if not self._body_pending or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading yet: the client is not the one stalling
            self._last_read = now
        waited = now - self._last_read
        if waited < self.limits.body_timeout_s:
            self._arm(self.limits.body_timeout_s - waited, self._on_body_timeout)
            return
        self._reject(
            408, "Request Timeout", ErrorType.timeout,
            f"request body stalled for {self.limits.body_timeout_s:g}s", "stalled body",
        )  # fmt: skip

    def _reject(self, status: int, reason: str, error_type: ErrorType, message: str, what: str) -> None:
        """Answer with an error (when no response is under way on this connection) and close it; a request
        still reading its body sees a client disconnect."""
        cycle = self.cycle
        responding = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if not responding:
            self.transport.write(_error_response(status, reason, error_type, message))
        self.transport.close()
        self.guard.note(what)
