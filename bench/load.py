"""A closed-loop HTTP load generator on asyncio + httpx.

`concurrency` workers, each with its own HTTP/1.1 keep-alive connection (so exactly `concurrency`
connections), send their next request as soon as the previous answer is fully read. A level runs either a
fixed number of requests or for a fixed duration, after a short warm-up whose requests are not counted.

Two client engines: `httpx` (the default: one `httpx.AsyncClient` per worker) and `raw`, a minimal HTTP/1.1
client on an asyncio protocol that writes prepared request bytes and reads Content-Length framed answers. On
a 2-core machine the generator shares the cores with the server, and httpx costs ~0.6 ms of CPU per request,
more than the service itself spends on a small decode; `raw` costs a few tens of microseconds, so it shows
what the server can do when the client is not the bottleneck.

Closed loop means latency is measured per request as seen by a waiting client (no coordinated-omission
correction): right for comparing two servers under the same load, not for promising an SLO at an open arrival
rate. The generator shares the machine's CPUs with the server it measures; both targets pay the same tax.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx
import numpy as np


@dataclass(frozen=True)
class RequestSpec:
    """One prepared request; bodies are built before the clock starts so the client measures the server."""

    method: str
    path: str
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # completed, counted requests (ok + errors)
    ok: int
    errors: dict[str, int]  # "503": 12, "ConnectError": 1
    elapsed_s: float
    requests_per_s: float  # successful requests per second
    items_per_s: float  # successful requests x items per request, per second
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    bytes_received: int
    client_cpu_s: float = 0.0  # CPU the generator itself used in the timed part (it shares the machine)
    unfinished: int = 0  # requests in flight when a timed level ended: abandoned, not counted
    # The server's CPU time in the timed window per completed request: steadier than throughput on a shared
    # machine, since the neighbours' load changes how fast the work gets done more than how much there is.
    server_cpu_ms_per_request: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    latencies_s: Sequence[float],
    statuses: Sequence[str],
    elapsed_s: float,
    concurrency: int,
    items_per_request: int,
    bytes_received: int = 0,
) -> LoadResult:
    """Aggregate per-request records; latency percentiles are over successful (2xx) requests only."""
    ok_lat = np.array([lat for lat, st in zip(latencies_s, statuses, strict=True) if st.startswith("2")])
    errors = Counter(st for st in statuses if not st.startswith("2"))
    ok = int(ok_lat.size)
    elapsed_s = max(elapsed_s, 1e-9)

    def ms(value: float) -> float:
        return round(float(value) * 1000.0, 3)

    return LoadResult(
        concurrency=concurrency,
        requests=len(statuses),
        ok=ok,
        errors=dict(sorted(errors.items())),
        elapsed_s=round(elapsed_s, 3),
        requests_per_s=round(ok / elapsed_s, 2),
        items_per_s=round(ok * items_per_request / elapsed_s, 2),
        p50_ms=ms(np.percentile(ok_lat, 50)) if ok else None,
        p99_ms=ms(np.percentile(ok_lat, 99)) if ok else None,
        mean_ms=ms(ok_lat.mean()) if ok else None,
        max_ms=ms(ok_lat.max()) if ok else None,
        bytes_received=bytes_received,
    )


class _HttpxConnection:
    """One httpx client with one keep-alive connection.

    One client per worker rather than one client with a pool of `concurrency` connections: httpcore 1.0's
    pool rescans every connection for every queued request (`_assign_requests_to_connections`), and at 64
    connections the generator burned ~40 ms of CPU per request in it and became the bottleneck.
    verify=False: plain HTTP on loopback; loading the CA bundle once per client costs ~20 ms each.
    """

    def __init__(self, base_url: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None):
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.client = httpx.AsyncClient(
            base_url=base_url, limits=limits, timeout=timeout_s, transport=transport, verify=False
        )

    async def request(self, spec: RequestSpec) -> tuple[str, int, str | None]:
        """(status, body bytes, Retry-After header)."""
        try:
            r = await self.client.request(spec.method, spec.path, content=spec.content, headers=spec.headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__, 0, None
        return str(r.status_code), len(r.content), r.headers.get("retry-after")

    async def aclose(self) -> None:
        await self.client.aclose()


class _RawProtocol(asyncio.Protocol):
    """Reads Content-Length framed HTTP/1.1 responses, one at a time (no pipelining)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[str, int, str | None]] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's class is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(("RemoteProtocolError", 0, None))

    def _deliver(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:  # chunked answers never come from the routes benchmarked here
            self.waiter.set_result(("UnframedResponse", 0, None))
            return
        length = int(headers["content-length"])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.waiter.set_result((lines[0].split(" ", 2)[1], length, headers.get("retry-after")))


class _RawConnection:
    def __init__(self, base_url: str, timeout_s: float):
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.timeout_s = timeout_s
        self.protocol: _RawProtocol | None = None
        self.prepared: dict[int, bytes] = {}

    def _bytes(self, spec: RequestSpec) -> bytes:
        key = id(spec)
        if key not in self.prepared:
            head = f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            head += f"Content-Length: {len(spec.content)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in spec.headers.items())
            self.prepared[key] = head.encode("latin-1") + b"\r\n" + spec.content
        return self.prepared[key]

    async def request(self, spec: RequestSpec) -> tuple[str, int, str | None]:
        loop = asyncio.get_running_loop()
        try:
            if self.protocol is None or self.protocol.lost:
                _, self.protocol = await loop.create_connection(_RawProtocol, self.host, self.port)
            protocol = self.protocol
            assert protocol.transport is not None
            protocol.waiter = loop.create_future()
            protocol.transport.write(self._bytes(spec))
            async with asyncio.timeout(self.timeout_s):
                return await protocol.waiter
        except (OSError, TimeoutError) as exc:
            await self.aclose()
            return type(exc).__name__, 0, None
        except asyncio.CancelledError:  # an answer may still come: never let it meet the next request
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


async def run_load(
    base_url: str,
    requests: Sequence[RequestSpec],
    *,
    concurrency: int,
    total: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    warmup_s: float | None = None,
    items_per_request: int = 1,
    timeout_s: float = 60.0,
    client: Literal["httpx", "raw"] = "httpx",
    transport: httpx.AsyncBaseTransport | None = None,
    server_cpu: Callable[[], float] | None = None,
    honor_retry_after: bool = True,
) -> LoadResult:
    """Drive `base_url` with `concurrency` workers cycling through `requests`.

    Runs `total` requests (all awaited), or for `duration_s` seconds: then, as wrk does, requests still in
    flight are abandoned and not counted (`unfinished`), so one level can never overrun its time. First,
    `warmup` uncounted requests (stopped after `warmup_s` when given) open the connections and warm the
    server. `transport` lets a test drive an ASGI app in-process (httpx engine only). `server_cpu`, a
    function returning the server's CPU seconds so far, is read at both ends of the timed window.

    A worker answered 503 with `Retry-After` waits that long (at most 5 s) before its next request, as a
    well-behaved client does; without that, an overloaded server spends its time rejecting instant retries.
    """
    if (total is None) == (duration_s is None):
        raise ValueError("give exactly one of total or duration_s")
    if concurrency < 1 or not requests:
        raise ValueError("need concurrency >= 1 and at least one request")
    if client == "raw" and transport is not None:
        raise ValueError("the raw client speaks to sockets only")
    connections: list[_HttpxConnection | _RawConnection] = [
        _RawConnection(base_url, timeout_s)
        if client == "raw"
        else _HttpxConnection(base_url, timeout_s, transport)
        for _ in range(concurrency)
    ]
    counter = itertools.count()
    latencies: list[float] = []
    statuses: list[str] = []
    received = 0

    async def one(conn: _HttpxConnection | _RawConnection, spec: RequestSpec) -> tuple[float, str, int]:
        start = time.perf_counter()
        status, size, retry_after = await conn.request(spec)
        latency = time.perf_counter() - start
        if status == "503" and retry_after and honor_retry_after:
            with contextlib.suppress(ValueError):
                await asyncio.sleep(min(float(retry_after), 5.0))
        return latency, status, size

    async def warm_worker(conn: _HttpxConnection | _RawConnection) -> None:
        while (i := next(counter)) < warmup:
            await one(conn, requests[i % len(requests)])

    async def worker(conn: _HttpxConnection | _RawConnection) -> None:  # timed levels: runs until cancelled
        nonlocal received
        while True:
            i = next(counter)
            if total is not None and i >= total:
                return
            latency, status, size = await one(conn, requests[i % len(requests)])
            latencies.append(latency)
            statuses.append(status)
            received += size

    async def run_for(jobs: list, seconds: float | None) -> int:
        """Await the jobs for at most `seconds`; cancel the rest; return how many were cut off."""
        tasks = [asyncio.ensure_future(job) for job in jobs]
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    try:
        if warmup:
            await run_for([warm_worker(c) for c in connections], warmup_s)
        counter = itertools.count()
        server_start = server_cpu() if server_cpu else 0.0
        cpu_start, start = time.process_time(), time.perf_counter()
        unfinished = await run_for([worker(c) for c in connections], duration_s)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        server_used = server_cpu() - server_start if server_cpu else None
    finally:
        await asyncio.gather(*(c.aclose() for c in connections))
    result = summarize(latencies, statuses, elapsed, concurrency, items_per_request, received)
    result.client_cpu_s = round(cpu, 3)
    result.unfinished = unfinished if duration_s is not None else 0
    if server_used is not None and result.requests:
        result.server_cpu_ms_per_request = round(1000 * server_used / result.requests, 3)
    return result


def run_load_sync(*args, **kwargs) -> LoadResult:
    """`run_load` on a fresh event loop (uvloop when installed, as the servers use)."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_load(*args, **kwargs))
