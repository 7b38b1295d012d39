"""Optional OpenTelemetry tracing: a span per request, with the request's queue wait, batch, inference,
image decoding and response encoding as child spans.

Off by default, and then free: this module imports nothing from OpenTelemetry (FastAPI itself imports the
API package; its own telemetry stays off, as no global tracer provider is set), `span()` hands back one
shared no-op context manager, and the batcher's hook is None. It turns on with `VAE_TRACING=true`, or when a
standard variable asks for traces (OTEL_TRACES_EXPORTER other than `none`, or an OTLP endpoint in
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless OTEL_SDK_DISABLED=true. It needs
the `tracing` extra (`pip install -e ".[tracing]"` in the checkout).

Configuration is OpenTelemetry's own: OTEL_TRACES_EXPORTER (`otlp`, the default; `console`; `none`),
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (`http/protobuf`, the default, or `grpc`), the OTLP endpoint, headers and
timeouts, OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME (default `vae-service`), OTEL_RESOURCE_ATTRIBUTES and
OTEL_PROPAGATORS (default W3C `tracecontext,baggage`): an incoming `traceparent` (HTTP header or gRPC
metadata) makes the request's span a child of the caller's.

Spans of one request (HTTP `POST /v1/decode`, or gRPC `grpc ModelInfer`):
- the server span: `http.request.method`, `http.route`, `url.path`, `http.response.status_code`,
  `vae.request_id` (HTTP); `rpc.system`, `rpc.method`, `rpc.grpc.status_code` (gRPC);
- `vae.queue` (from enqueue to the start of the onnxruntime call) and `vae.inference` (the call itself) for
  every batch the request's items ran in, with `vae.graph` (`mnist/decoder`), `vae.batch.size` (items in
  the batch, all requests together) and `vae.request.items` (this request's items);
- `vae.decode_images` (`vae.images`) and `vae.encode_png` / `vae.encode_json` around the codecs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from service.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Tracer
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_NOOP = contextlib.nullcontext()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None

_TRUE = {"1", "true", "yes", "on"}


def wanted(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is asked for: VAE_TRACING, or the standard OTEL_* variables (see the module doc)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if settings.tracing:
        return True
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters and exporters != "none":
        return True
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name) for name in endpoints)


def active() -> bool:
    return _tracer is not None


def install(
    processor: SpanProcessor | None = None, environ: Mapping[str, str] = os.environ, *, required: bool = True
) -> None:
    """Turn tracing on for this process: a tracer provider with the exporters OTEL_* names (or the given
    processor instead, as tests do with an in-memory exporter). Idempotent.

    Without the SDK installed: an error when `required` (VAE_TRACING=true), else a warning and no tracing
    (OTEL_* variables set for a whole cluster must not stop an image built without the `tracing` extra)."""
    global _tracer, _provider
    if _tracer is not None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        # The package is installed from its checkout (or a wheel built there), not from an index.
        message = (
            "tracing is asked for but OpenTelemetry is not installed: in the project's checkout, "
            'pip install -c requirements/constraints.txt -e ".[tracing]"'
        )
        if required:
            raise RuntimeError(f"VAE_TRACING=true: {message}") from None
        log.warning("OTEL_* variables ask for traces; %s (serving without tracing)", message)
        return

    from service import __version__

    name = environ.get("OTEL_SERVICE_NAME") or "vae-service"
    resource = Resource.create({"service.name": name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    for each in [processor] if processor is not None else _processors(environ):
        provider.add_span_processor(each)
    _provider, _tracer = provider, provider.get_tracer("service")


def uninstall() -> None:
    """Flush and turn tracing off again (tests; an app that is shut down)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _processors(environ: Mapping[str, str]) -> list[SpanProcessor]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    out: list[SpanProcessor] = []
    for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        name = name.strip()
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            exporter: SpanExporter  # endpoint, headers, timeout: from OTEL_*
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

                exporter = Grpc()
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

                exporter = Http()
            out.append(BatchSpanProcessor(exporter))
        elif name == "console":
            out.append(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name and name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    return out


# --- spans ------------------------------------------------------------------------------------------------


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one while tracing is on; a shared no-op otherwise."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def server_span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Any]:
    """The span of one request, a child of the caller's span when `carrier` (headers or gRPC metadata)
    holds a W3C traceparent; yields the span (None when tracing is off)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    parent = propagate.extract(carrier)
    kind = SpanKind.SERVER
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        yield current


def observe_job(graph: str, enqueued: float, started: float, finished: float, batch: int, items: int) -> None:
    """Called by the batcher in the request's context for each batch its items ran in (monotonic times); the
    registry hands it to every batcher of an app made while tracing is on."""
    if _tracer is None:
        return
    offset = time.time_ns() - time.monotonic_ns()  # monotonic -> epoch nanoseconds

    def ns(t: float) -> int:
        return int(t * 1e9) + offset

    attributes: dict[str, Any] = {"vae.graph": graph, "vae.batch.size": batch, "vae.request.items": items}
    for name, start, end in (("vae.queue", enqueued, started), ("vae.inference", started, finished)):
        _tracer.start_span(name, start_time=ns(start), attributes=attributes).end(end_time=ns(end))


# --- HTTP -------------------------------------------------------------------------------------------------


class TracingMiddleware:
    """Pure ASGI: one server span per HTTP request, named `METHOD route-template` once the route is known."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import Status, StatusCode

        from service.logs import request_id

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method = scope["method"]
        status = 500
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "vae.request_id": request_id.get(),
        }
        with server_span(method, headers, attributes) as current:

            async def send_traced(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR))
