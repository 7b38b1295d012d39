"""The gRPC adapter of the Open Inference Protocol: KServe's `inference.GRPCInferenceService` on `grpc.aio`.

It runs on the HTTP server's event loop, so it shares the models, batchers, limits and metrics of `/v1` and
`/v2` and adds no rule of its own: a tensor is checked by the same functions as `/v2` REST
(`service.inference.limits` through `service.http.routes.v2`), and an error of the service's closed set
becomes one gRPC status (`STATUS_CODES`), its message the same text REST sends.

- API keys (when configured) travel as metadata, `authorization: Bearer <key>` or `x-api-key: <key>`;
  ServerLive and ServerReady stay open, like `/v2/health/*`.
- Deadlines: the call's own deadline (or `request_timeout_s`, whichever is sooner) bounds queueing and
  inference, then DEADLINE_EXCEEDED. A call that the client cancels or whose deadline passes is cancelled
  here too, and its queued batcher work is dropped before it runs.
- Bounds: messages up to `max_body_bytes` in and `max_response_bytes` out, at most `max_connections` calls
  in progress (gRPC answers RESOURCE_EXHAUSTED beyond), idle connections closed after a minute or
  `idle_timeout_s`, whichever is longer; `--workers N` processes share the port (SO_REUSEPORT).
- Tensors: one FP32 input, in `raw_input_contents` (what tritonclient sends) or `contents.fp32_contents`;
  outputs always go back in `raw_output_contents`, as Triton answers.
- Tracing (when on, see `service.tracing`): a server span `inference.GRPCInferenceService/<method>`, a child
  of the caller's when its metadata carries a W3C `traceparent`, with the queue and inference spans below it.
- Metrics: each call is counted in `vae_http_requests` / `vae_http_request_duration_seconds` with route
  `grpc:<method>`, method `GRPC`, and the HTTP status its outcome would have had over REST (200, 4xx, 5xx),
  so one dashboard covers both transports; batch metrics come from the shared batchers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from service import tracing
from service.api_keys import key_matches, offered_key
from service.config import Settings
from service.errors import CLIENT_CLOSED, ErrorType, InvalidInput, ServiceError, Timeout, Unauthorized, shown
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.inference import ModelRegistry, oip
from service.inference.limits import check_output_names, check_tensor
from service.inference.oip import resolve_graph
from service.metrics import Metrics
from service.open_clients import OpenClients

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
LOG_INTERVAL_S = 10.0  # as service.server.connections logs its refusals

STATUS_CODES: dict[ErrorType, grpc.StatusCode] = {
    ErrorType.invalid_input: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorType.unsupported_media_type: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorType.model_not_found: grpc.StatusCode.NOT_FOUND,
    ErrorType.not_found: grpc.StatusCode.NOT_FOUND,
    ErrorType.method_not_allowed: grpc.StatusCode.UNIMPLEMENTED,
    ErrorType.payload_too_large: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorType.unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    ErrorType.not_ready: grpc.StatusCode.UNAVAILABLE,
    ErrorType.overloaded: grpc.StatusCode.UNAVAILABLE,
    ErrorType.timeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorType.inference_failed: grpc.StatusCode.INTERNAL,
}


def _version(text: str) -> str | None:
    return text or None  # the protocol's empty version: the server's choice, here the newest loaded


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs; method names are the protocol's."""

    def __init__(self, registry: ModelRegistry, settings: Settings, metrics: Metrics, clients: OpenClients):
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.clients = clients
        self.keys = settings.api_key_values()

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Authorize, run `work` within the deadline, map errors to statuses, count and trace the call.

        The call is counted before its status goes out, so a client that reads /metrics next sees it.
        """
        started = time.perf_counter()
        metadata = context.invocation_metadata() or ()
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}
        carrier = {k: v for k, v in metadata if isinstance(v, str)}
        with (
            self.clients.grpc_call(),
            tracing.server_span(f"{SERVICE}/{method}", carrier, attributes) as current,
        ):

            def count(status: int, code: grpc.StatusCode) -> None:
                self.metrics.observe_request(f"grpc:{method}", "GRPC", status, time.perf_counter() - started)
                if current is not None:
                    current.set_attribute("rpc.grpc.status_code", code.value[0])

            try:
                offered = (
                    offered_key(dict((k.lower(), v) for k, v in metadata or ()).get) if self.keys else b""
                )
                if self.keys and method not in OPEN_METHODS and not key_matches(offered, self.keys):
                    raise Unauthorized()
                remaining = context.time_remaining()
                budget = self.settings.request_timeout_s
                if remaining is not None:
                    budget = min(budget, max(remaining, 0.0))
                try:
                    async with asyncio.timeout(budget):
                        result = await work()
                except TimeoutError:
                    raise Timeout(f"the call did not finish within {budget:g} s") from None
            except ServiceError as exc:
                code = STATUS_CODES[exc.error_type]
                count(exc.status, code)
                trailers = tuple((k.lower(), v) for k, v in exc.headers.items() if k.lower() == "retry-after")
                await context.abort(code, exc.message, trailing_metadata=trailers)
                raise AssertionError("unreachable: abort raises") from None
            except asyncio.CancelledError:
                count(CLIENT_CLOSED, grpc.StatusCode.CANCELLED)  # the client cancelled or its deadline passed
                raise
            except Exception:
                count(500, grpc.StatusCode.INTERNAL)
                log.exception("unhandled error in gRPC %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the error was logged")
                raise AssertionError("unreachable: abort raises") from None
            count(200, grpc.StatusCode.OK)
            return result

    # --- health and metadata ------------------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerReadyResponse(ready=self.registry.ready)

        return await self._call("ServerReady", context, work)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerMetadataResponse(**oip.server_metadata())

        return await self._call("ServerMetadata", context, work)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            # Unknown or not (yet) loaded: not ready, as Triton answers, rather than an error.
            try:
                resolve_graph(self.registry, request.name, _version(request.version))
            except ServiceError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=not self.registry.draining)

        return await self._call("ModelReady", context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            meta = oip.model_metadata(self.registry, request.name, _version(request.version))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            for side in ("inputs", "outputs"):
                meta[side] = [tensor(**t) for t in meta[side]]
            return pb.ModelMetadataResponse(**meta)

        return await self._call("ModelMetadata", context, work)

    # --- inference ----------------------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            async def read() -> _GrpcRequest:
                return _GrpcRequest(request)

            done = await oip.infer(
                self.registry, self.settings, request.model_name, _version(request.model_version), read
            )
            with tracing.span("vae.encode_protobuf"):
                return _response(done)

        return await self._call("ModelInfer", context, work)


class _GrpcRequest:
    """A ModelInferRequest: the one FP32 input in raw_input_contents or in contents; every output comes back
    in raw_output_contents."""

    def __init__(self, request: Any):
        self.request = request

    def wanted_outputs(self, names: list[str]) -> list[tuple[str, bool]]:
        if not self.request.outputs:
            return [(name, True) for name in names]
        chosen = [out.name for out in self.request.outputs]
        check_output_names(chosen, names)
        return [(name, True) for name in chosen]

    def input_shape(self, want: dict[str, Any], settings: Settings, *, images: bool) -> list[int]:
        if len(self.request.inputs) != 1:
            raise InvalidInput(f"expected exactly one input, {want['name']!r}")
        tensor = self.request.inputs[0]
        shape = list(tensor.shape)
        check_tensor(tensor.name, tensor.datatype, shape, want, settings, images=images)
        return shape

    def input_array(self, shape: list[int]) -> np.ndarray:
        request = self.request
        tensor = request.inputs[0]
        name, count = tensor.name, int(np.prod(shape))
        typed = tensor.contents.fp32_contents if tensor.HasField("contents") else None
        if request.raw_input_contents:
            if typed is not None and len(typed):
                raise InvalidInput("send the input either in raw_input_contents or in contents, not both")
            if len(request.raw_input_contents) != 1:
                raise InvalidInput("raw_input_contents must hold exactly one entry per input")
            raw = request.raw_input_contents[0]
            if len(raw) != count * 4:
                raise InvalidInput(
                    f"input {shown(name)} has {len(raw)} bytes; shape {shape} of FP32 needs {count * 4}"
                )
            array = np.frombuffer(raw, dtype="<f4").reshape(shape)
        else:
            if typed is None or len(typed) != count:
                got = 0 if typed is None else len(typed)
                raise InvalidInput(
                    f"input {shown(name)} has {got} fp32_contents values; shape {shape} needs {count}"
                )
            array = np.asarray(typed, dtype=np.float32).reshape(shape)
        return np.ascontiguousarray(array, dtype=np.float32)


def _response(done: oip.Inference[_GrpcRequest]) -> Any:
    response = pb.ModelInferResponse(
        model_name=done.ref.oip_name, model_version=done.version, id=done.request.request.id
    )
    for name, _ in done.outputs:
        array = np.ascontiguousarray(done.results[name], dtype="<f4")
        response.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
        response.raw_output_contents.append(array.tobytes())
    return response


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# Each RPC's request and response message types, as the protocol defines them.
_MESSAGES: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


class Shedding:
    """Counts the calls the transport bounds cut short, logged as the HTTP connection guard logs its own:
    the first of each kind at once, then one line per kind and LOG_INTERVAL_S with the count."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last_log: dict[str, float] = {}

    def note(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self.last_log.get(what, -LOG_INTERVAL_S) >= LOG_INTERVAL_S:
            log.warning("shedding gRPC calls: %s: %d", what, self.counts.pop(what))
            self.last_log[what] = now


def _unary_over_stream(
    handler: Callable[[Any, Any], Awaitable[Any]], receive_s: float, send_s: float, shedding: Shedding
) -> Callable[[Any, Any], Awaitable[None]]:
    """A unary RPC served as a bidirectional stream (the same frames on the wire, so every unary client
    works unchanged), so that both ends of the message exchange have a deadline grpcio does not give:

    - the request message must arrive whole within `receive_s` of the call's start; a stalled or partial
      one is answered DEADLINE_EXCEEDED and the call, with the bytes it buffered, is dropped;
    - a response that has not left after `send_s` (the client keeps its flow-control window shut) is
      counted and logged; grpcio offers no way to cancel a server call, so the connection's age bound
      (`grpc_max_connection_age_s`, then `send_timeout_s` of grace) is what closes it and frees the response.
    """

    async def call(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            async with asyncio.timeout(receive_s):
                request = await context.read()
        except TimeoutError:
            shedding.note("request message not received in time")
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {receive_s:g} s",
            )
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
        response = await handler(request, context)
        write = asyncio.ensure_future(context.write(response))
        done, _ = await asyncio.wait({write}, timeout=send_s)
        if not done:
            shedding.note("responses not read within the send timeout (held until the connection's age)")
        await write

    return call


def _handlers(servicer: InferenceServicer, settings: Settings) -> dict[str, grpc.RpcMethodHandler]:
    shedding = Shedding()
    return {
        name: grpc.stream_stream_rpc_method_handler(
            _unary_over_stream(
                getattr(servicer, name), settings.body_timeout_s, settings.send_timeout_s, shedding
            ),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in _MESSAGES.items()
    }


def server_options(settings: Settings, max_connections: int, *, shared_port: bool) -> list[tuple[str, Any]]:
    """grpcio (C-core) channel arguments that give the gRPC port the HTTP port's connection bounds."""
    # A gRPC channel is meant to stay open between calls (reconnecting costs a handshake per burst), so an
    # established connection without calls is kept for a minute at least; sockets that never finish the
    # handshake are closed at header_timeout_s, and the connection cap bounds how many idle ones there are.
    idle_ms = int(max(settings.idle_timeout_s, 60.0) * 1000)
    return [
        # Messages: refused past these sizes (the declared length is checked as the message arrives).
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", settings.max_response_bytes),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_header_bytes),
        # Connections: a cap (checked at accept, before any handshake, so raw sockets count too), a deadline
        # for the HTTP/2 preface and settings (a socket that sends nothing is closed, as HTTP's header
        # timeout does), idle connections closed, and streams per connection bounded.
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", idle_ms),
        # Every connection ends: after its age a GOAWAY (clients reconnect transparently), then its calls
        # get a grace to finish before it is closed. This is what frees a response a client never reads.
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
        (
            "grpc.max_connection_age_grace_ms",
            int(max(settings.send_timeout_s, settings.request_timeout_s) * 1000),
        ),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
        # Peers that stop answering (dead hosts, half-open sockets) are found by keepalive pings and closed;
        # clients may ping at most every 10 s without calls in flight, as grpc's own defaults suggest.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        # One port, one server: a second process binding it fails at start instead of sharing its clients,
        # except between the `--workers N` processes of one `vae-serve`, which share it on purpose.
        ("grpc.so_reuseport", 1 if shared_port else 0),
    ]


class GrpcServer:
    """The running gRPC server and the port it is bound to."""

    def __init__(self, server: grpc.aio.Server, port: int):
        self.server = server
        self.port = port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish for up to grace_s seconds, then cancel them."""
        await self.server.stop(grace_s)


async def start(
    registry: ModelRegistry,
    settings: Settings,
    metrics: Metrics,
    *,
    clients: OpenClients | None = None,
    shared_port: bool = False,
) -> GrpcServer:
    """Bind `settings.host:settings.grpc_port` and start serving; raises if the port cannot be bound.

    `clients`: where the calls in flight are counted (service.open_clients); `shared_port`: this process is
    one of `vae-serve --workers N`, which share the port (SO_REUSEPORT)."""
    from service.server.connections import connection_shares, fd_budget

    max_connections = connection_shares(settings, fd_budget())[1]
    server = grpc.aio.server(
        options=server_options(settings, max_connections, shared_port=shared_port),
        maximum_concurrent_rpcs=settings.grpc_max_calls,
    )
    servicer = InferenceServicer(registry, settings, metrics, clients or OpenClients())
    handlers = _handlers(servicer, settings)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    address = _address(settings.host, settings.grpc_port)
    hint = "VAE_GRPC_PORT; 0 turns gRPC off; is another server on it?"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # the service does not start: a configured port it cannot serve is an error
        raise RuntimeError(f"gRPC: cannot bind {address} ({hint}): {exc}") from None
    if port == 0:
        raise RuntimeError(f"gRPC: cannot bind {address} ({hint})")
    await server.start()
    log.info(
        "gRPC (Open Inference Protocol) listening on %s (at most %d connections, %d calls)",
        _address(settings.host, port), max_connections, settings.grpc_max_calls,
    )  # fmt: skip
    return GrpcServer(server, port)
