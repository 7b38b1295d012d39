"""Wiring only: settings, data plane, middleware, error handlers, routers, static page.

Run with `vae-serve`, or `uvicorn --factory service.main:create_app` (settings from `VAE_*` variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.config import Settings
from service.errors import install_error_handlers
from service.inference import ModelRegistry
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.routes import health, inference, models, v2
from service.routes.static import page_mount
from service.security import ApiKeyMiddleware, document_api_keys

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    registry: ModelRegistry = app.state.registry
    settings: Settings = app.state.settings
    # Loading verifies hashes and warms sessions up: seconds of blocking work, kept off the event loop so
    # /healthz answers (and /readyz says 503) meanwhile.
    await asyncio.to_thread(registry.load)
    log.info("ready=%s default=%s failures=%s", registry.ready, registry.default_name, registry.failures)
    watcher = None
    if settings.reload_interval_s > 0:
        watcher = asyncio.create_task(registry.watch(settings.reload_interval_s), name="model-reload")
    restore = _install_signal_handlers(registry, settings.drain_s)
    try:
        yield
    finally:
        restore()
        registry.draining = True
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await registry.close()


def _install_signal_handlers(registry: ModelRegistry, drain_s: float) -> Callable[[], None]:
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

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. Without settings (uvicorn's factory mode) they are read from the environment."""
    if settings is None:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_json)
    metrics = Metrics()
    app = FastAPI(
        title="VAE Service",
        version=__version__,
        summary="Encode, decode, sample, reconstruct and interpolate with ONNX-exported VAEs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = ModelRegistry(settings, metrics)

    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(inference.router)
    app.include_router(v2.router)
    if STATIC_DIR.is_dir():  # the web page; mounted last so it never shadows an API route
        app.router.routes.append(page_mount(STATIC_DIR))

    # Added innermost first: the request context wraps everything, so even a 413 carries a request id.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_values())
        document_api_keys(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "Accept"],
            expose_headers=["X-Request-ID", "X-Seed", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
