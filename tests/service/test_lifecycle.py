"""service.lifecycle and the connection guard's bookkeeping on their own, without a server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

import pytest
from serving import until

from service import lifecycle
from service.config import Settings
from service.server import connections

pytestmark = pytest.mark.timeout(30)


class _Registry:
    def __init__(self) -> None:
        self.draining = False
        self.reloads = 0

    async def reload(self) -> list[str]:
        self.reloads += 1
        return []


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sigterm_drains_then_hands_over_to_the_server_and_sighup_reloads():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    registry = _Registry()
    stopped: list[tuple[int, float]] = []

    async def main() -> tuple[bool, list[tuple[int, float]], int, Any]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def server_handler(sig: int, frame: Any) -> None:  # what uvicorn installs: begin the shutdown
            stopped.append((sig, loop.time()))
            stop.set()

        previous = signal.signal(signal.SIGTERM, server_handler)
        try:
            restore = lifecycle.install_signal_handlers(registry, drain_s=0.2)  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGHUP)
            sent = loop.time()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0)
            draining_at_once = registry.draining
            await asyncio.wait_for(stop.wait(), 5)
            restore()
            handler_after = signal.getsignal(signal.SIGTERM)
            return draining_at_once, [(s, t - sent) for s, t in stopped], registry.reloads, handler_after
        finally:
            signal.signal(signal.SIGTERM, previous)

    draining, calls, reloads, handler_after = asyncio.run(main())
    assert draining  # readiness went false at the signal, before the server was told
    assert len(calls) == 1 and calls[0][0] == signal.SIGTERM and calls[0][1] >= 0.2  # after the drain
    assert reloads == 1
    assert handler_after is not None and getattr(handler_after, "__name__", "") == "server_handler"
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_no_signal_handlers_off_the_main_thread():
    out: list[Any] = []

    def run() -> None:
        async def main() -> None:
            restore = lifecycle.install_signal_handlers(_Registry(), drain_s=1)  # type: ignore[arg-type]
            out.append(signal.getsignal(signal.SIGTERM))
            restore()

        asyncio.run(main())

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert out == [before]


def test_graceful_timeout_covers_the_longest_request():
    assert lifecycle.graceful_timeout_s(Settings(request_timeout_s=30)) == 35


def test_refusals_are_logged_at_once_then_once_per_interval(monkeypatch, caplog):
    monkeypatch.setattr(connections, "LOG_INTERVAL_S", 0.2)
    limits = connections.ConnectionLimits(5, 10, 32768, 15, 30, 64)

    async def main() -> None:
        guard = connections._Guard(asyncio.get_running_loop(), set(), limits)
        for _ in range(50):
            guard.note("slow headers")
        guard.note("stalled body")
        # One interval (0.2 s) later the 49 held back are written as one line, the third.
        await until(lambda: len(caplog.records) >= 3, 5)

    with caplog.at_level(logging.WARNING, logger="service.server.connections"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "shedding connections (cap 64, 0 open): slow headers: 1",
        "shedding connections (cap 64, 0 open): stalled body: 1",
        "shedding connections (cap 64, 0 open): slow headers: 49",
    ]


def test_the_fd_budget_leaves_room_for_the_process_own_files():
    resource = pytest.importorskip("resource")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit")
    assert connections.fd_budget() == max(16, soft - connections.FD_HEADROOM)
    limits = connections.ConnectionLimits.from_settings(Settings(max_connections=1_000_000))
    assert limits.max_connections == connections.fd_budget()  # capped to what the limit allows
