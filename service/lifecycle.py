"""The process lifecycle in one place: load and warm models, watch for new versions, reload on SIGHUP, drain
on SIGTERM, close everything on shutdown, and exit 0 after a graceful stop.

Timeline of a SIGTERM under `vae-serve`:

1. `/readyz` answers 503 at once (`registry.draining`), while requests are still accepted for `drain_s`
   seconds, so a load balancer that polls readiness stops sending before anything is refused;
2. then uvicorn's own graceful shutdown starts: it stops listening, closes idle keep-alive connections and
   waits up to `graceful_timeout_s()` for in-flight requests;
3. the lifespan exits: the reload watcher stops, batchers and sessions close;
4. the process exits with status 0 (uvicorn would re-raise the signal and exit -15).

A second SIGTERM during the drain skips the rest of it. SIGHUP looks for new model versions now instead of at
the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from service.config import Settings
from service.state import LIFESPAN_KEY

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.inference import ModelRegistry
    from service.state import ServiceState

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The app's lifespan: models loaded and warm before the first request, closed after the last. Its state
    (the app's ServiceState under LIFESPAN_KEY) is what the server hands each connection's protocol."""
    state: ServiceState = app.state.service
    registry, settings = state.registry, state.settings
    # Loading verifies hashes and warms sessions up: seconds of blocking work, kept off the event loop so
    # /healthz answers (and /readyz says 503) meanwhile.
    await asyncio.to_thread(registry.load)
    log.info("ready=%s default=%s failures=%s", registry.ready, registry.default_name, registry.failures)
    if settings.api_keys:
        log.info("authentication: %d API key(s) required on /v1 and /v2", len(settings.api_keys))
    elif settings.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("authentication is off (VAE_API_KEYS unset or 'none') on %s", settings.host)
    grpc_server = None
    if settings.grpc_port:
        from service.grpc.server import start as start_grpc  # grpcio is imported only when gRPC is on

        # Under `vae-serve --workers N` the processes share the gRPC port on purpose (their plan, set by
        # service.server.workers before this lifespan runs).
        shared_port = state.serving is not None and state.serving["workers"] > 1
        grpc_server = await start_grpc(
            registry, settings, state.metrics, clients=state.clients, shared_port=shared_port
        )
        state.grpc_port = grpc_server.port
    watcher = None
    if settings.reload_interval_s > 0:
        watcher = asyncio.create_task(registry.watch(settings.reload_interval_s), name="model-reload")
    restore = install_signal_handlers(registry, settings.drain_s)
    try:
        yield {LIFESPAN_KEY: state}
    finally:
        restore()
        registry.draining = True
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if grpc_server is not None:  # calls in flight finish (up to the request timeout) before models close
            await grpc_server.stop(settings.request_timeout_s)
        await registry.close()
        state.close()


def install_signal_handlers(registry: ModelRegistry, drain_s: float) -> Callable[[], None]:
    """SIGHUP reloads models now; SIGTERM turns readiness off for drain_s seconds before the server's own
    graceful shutdown (stop listening, finish in-flight requests) begins. Returns a function undoing both.

    Only in the main thread (where uvicorn runs the app); test servers in other threads keep the defaults.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    undo: list[Callable[[], object]] = []
    pending: set[asyncio.Task[list[str]]] = set()

    def reload_now() -> None:
        log.info("SIGHUP: looking for new model versions")
        task = loop.create_task(registry.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    # Windows has no SIGHUP (AttributeError) and its event loops take no signal handlers
    # (NotImplementedError): there, new versions are found by the reload poll alone.
    with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload_now)
        undo.append(lambda: loop.remove_signal_handler(signal.SIGHUP))

    server_handler = signal.getsignal(signal.SIGTERM)  # uvicorn's, which starts the graceful shutdown
    if drain_s > 0 and callable(server_handler):

        def stop(sig: int) -> None:
            log.info("drained for %gs; stopping: in-flight requests finish, then the process exits", drain_s)
            server_handler(sig, None)

        def begin_drain(sig: int) -> None:
            log.info("SIGTERM: /readyz now answers 503; still serving for %gs", drain_s)
            loop.call_later(drain_s, stop, sig)

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if registry.draining:  # a second SIGTERM: stop draining and shut down now
                server_handler(sig, frame)
                return
            registry.draining = True  # readiness is false from this instant
            # Signal handlers may interrupt the loop anywhere; call_soon_threadsafe is the safe way in.
            loop.call_soon_threadsafe(begin_drain, sig)

        signal.signal(signal.SIGTERM, on_sigterm)

        def restore_sigterm() -> None:
            if signal.getsignal(signal.SIGTERM) is on_sigterm:
                signal.signal(signal.SIGTERM, server_handler)

        undo.append(restore_sigterm)

    def restore() -> None:
        for fn in reversed(undo):
            with contextlib.suppress(Exception):
                fn()

    return restore


def graceful_timeout_s(settings: Settings) -> int:
    """How long uvicorn waits for in-flight requests once it stops listening: the longest a request may
    take, plus a margin for writing its response."""
    return int(settings.request_timeout_s) + 5


def graceful_server(config: Any) -> Any:
    """uvicorn's server, except that SIGTERM is a normal, graceful stop: exit status 0 once drained, instead
    of re-raising the signal after shutdown (which makes the exit status -15)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and self._captured_signals[-1:] == [sig]:
                self._captured_signals.pop()

    return Server(config)
