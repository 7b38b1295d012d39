"""Wiring only: settings, data plane, middleware, error handlers, routers, static page; the lifespan (load,
reload, drain, signals) is `service.lifecycle`, the hot inference requests' lookup in front of the router
`service.http.hot_path`.

Run with `vae-serve`, or `uvicorn --factory service.main:create_app` (settings from `VAE_*` variables).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__, tracing
from service.config import Settings
from service.http import hot_path
from service.http.error_handlers import install_error_handlers
from service.http.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.http.routes import docs, embeddings, health, models, v1, v2
from service.http.security import ApiKeyMiddleware, document_api_keys
from service.http.static import page_mount
from service.lifecycle import lifespan
from service.logs import configure_logging
from service.state import ServiceState

STATIC_DIR = Path(__file__).parent / "static"

# In the router's order. Inference first: the router tries routes in order (an included router's twice, for
# the one that matches), and no two routers share a path, so the order decides only how much matching a
# request that misses the hot path costs.
ROUTERS = (v1.router, embeddings.router, v2.router, health.router, models.router, docs.router)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. Without settings (uvicorn's factory mode) they are read from the environment."""
    if settings is None:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title="VAE Service",
        version=__version__,
        summary="Encode, decode, sample, reconstruct and interpolate with ONNX-exported VAEs.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from service.http.routes.docs, with their assets served here
        redoc_url=None,
    )
    if tracing.wanted(settings):  # before the state: its batchers observe jobs only while tracing is on
        tracing.install(required=settings.tracing)  # exporters as the OTEL_* variables say
    app.state.service = state = ServiceState.create(settings)

    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    routes = [route for router in ROUTERS for route in router.routes]  # the app's first routes, in order
    hot_path.install(app, routes)
    app.router.routes.append(docs.assets_mount())
    if STATIC_DIR.is_dir():  # the web page; mounted last so it never shadows an API route
        app.router.routes.append(page_mount(STATIC_DIR))

    # Added innermost first: the request context wraps everything, so even a 413 carries a request id.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_values(), routes=routes)
        document_api_keys(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "Accept"],
            expose_headers=[
                "X-Request-ID",
                "X-Seed",
                "Retry-After",
                "X-Model-Version",
                "X-Embedding-Dimensions",
            ],
        )
    if tracing.active():  # inside the request context, so spans carry the request id
        app.add_middleware(tracing.TracingMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    return app
