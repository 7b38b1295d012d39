"""OpenTelemetry tracing: spans from the SDK's in-memory exporter, W3C traceparent honoured, free when off."""

from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import onnx_models
import pytest

from service import tracing
from service.config import Settings

pytest.importorskip("opentelemetry.sdk")
# Models built with onnx.helper (tests/onnx_models.py): no torch, no training.
models_dir = onnx_models.models_dir

pytestmark = pytest.mark.timeout(120)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans():
    """Tracing on for this test, into an in-memory exporter; returns the exporter."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.uninstall()


def by_name(finished) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in finished:
        out.setdefault(s.name, []).append(s)
    return out


def test_http_request_spans_with_a_given_traceparent(spans, serve_app, models_dir, digit_pngs):
    with serve_app(models_dir) as client:
        z = np.zeros((3, 8), np.float32).tolist()
        resp = client.post(
            "/v1/decode", json={"latents": z, "model": "tiny"}, headers={"traceparent": TRACEPARENT}
        )
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        finished = by_name(spans.get_finished_spans())
        (server,) = finished["POST /v1/decode"]
        assert format(server.context.trace_id, "032x") == TRACE_ID
        assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
        assert server.kind.name == "SERVER"
        assert server.attributes["http.route"] == "/v1/decode"
        assert server.attributes["http.request.method"] == "POST"
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["vae.request_id"] == request_id
        for name in ("vae.queue", "vae.inference", "vae.encode_png", "vae.encode_json"):
            (child,) = finished[name]
            assert child.parent.span_id == server.context.span_id, name
            assert child.context.trace_id == server.context.trace_id
        inference = finished["vae.inference"][0]
        assert inference.attributes["vae.graph"] == "tiny/decoder"
        assert inference.attributes["vae.batch.size"] == 3 and inference.attributes["vae.request.items"] == 3
        queue = finished["vae.queue"][0]
        assert queue.start_time <= queue.end_time == inference.start_time <= inference.end_time
        assert server.start_time <= queue.start_time and inference.end_time <= server.end_time
        assert finished["vae.encode_png"][0].attributes["vae.images"] == 3

        spans.clear()
        b64 = [base64.b64encode(p).decode() for p in digit_pngs[:2]]
        assert client.post("/v1/embeddings", json={"model": "tiny", "input": b64}).status_code == 200
        assert client.post("/v1/sample", json={"n": 100000}).status_code == 422
        finished = by_name(spans.get_finished_spans())
        (server,) = finished["POST /v1/embeddings"]
        assert server.parent is None  # no traceparent: a new trace
        (decoding,) = finished["vae.decode_images"]
        assert decoding.attributes["vae.images"] == 2 and decoding.parent.span_id == server.context.span_id
        assert finished["vae.inference"][0].attributes["vae.graph"] == "tiny/encoder"
        (refused,) = finished["POST /v1/sample"]
        assert refused.attributes["http.response.status_code"] == 422
        same_trace = [
            s.name for s in spans.get_finished_spans() if s.context.trace_id == refused.context.trace_id
        ]
        assert same_trace == ["POST /v1/sample"]  # refused before any inference


def test_grpc_call_spans_with_traceparent_metadata(spans, models_dir, settings_for):
    from serving import free_port
    from test_grpc import decode_request, grpc_app

    with grpc_app(settings_for(models_dir, grpc_port=free_port())) as (_, stub):
        stub.ModelInfer(
            decode_request(np.zeros((2, 8), np.float32)), metadata=(("traceparent", TRACEPARENT),)
        )
    finished = by_name(spans.get_finished_spans())
    (server,) = finished["inference.GRPCInferenceService/ModelInfer"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.attributes["rpc.system"] == "grpc" and server.attributes["rpc.grpc.status_code"] == 0
    (inference,) = finished["vae.inference"]
    assert inference.parent.span_id == server.context.span_id
    assert inference.attributes["vae.batch.size"] == 2 and inference.attributes["vae.graph"] == "tiny/decoder"
    assert finished["vae.encode_protobuf"][0].parent.span_id == server.context.span_id


def test_wanted_follows_vae_tracing_and_the_otel_variables():
    off, on = Settings(tracing=False), Settings(tracing=True)
    assert not tracing.wanted(off, {})
    assert tracing.wanted(on, {})
    assert not tracing.wanted(on, {"OTEL_SDK_DISABLED": "true"})
    assert tracing.wanted(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.wanted(off, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert tracing.wanted(off, {"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted(off, {"OTEL_TRACES_EXPORTER": "none"})


def test_exporters_from_otel_variables():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    def exporters(environ):
        processors = tracing._processors(environ)
        try:
            return [type(p.span_exporter) for p in processors]
        finally:
            for p in processors:
                p.shutdown()

    assert exporters({}) == [HttpExporter]  # OTLP over HTTP/protobuf, the specification's default
    assert exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == [GrpcExporter]
    assert exporters(
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    ) == [GrpcExporter]
    assert exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    with pytest.raises(ValueError, match="zipkin"):
        tracing._processors({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_off_by_default_loads_no_sdk(models_dir):
    script = f"""
import asyncio, sys
import httpx
from service.config import Settings
from service.main import create_app
app = create_app(Settings(models_dir={str(models_dir)!r}, provider="cpu", grpc_port=0))
async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/v1/sample", json={{"n": 2, "seed": 1}})
            assert r.status_code == 200, r.text
asyncio.run(main())
# FastAPI itself imports the OpenTelemetry API (its own telemetry stays off without a global provider);
# the SDK, exporters and propagation are ours to load, and only when tracing is on.
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
assert not loaded, loaded
from service import tracing
assert not tracing.active()
print("ok")
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OTEL_", "VAE_TRACING"))}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, env=env)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_without_the_sdk_vae_tracing_fails_and_otel_variables_warn(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the extra were not installed
    hint = r'in the project.s checkout, pip install -c requirements/constraints.txt -e "\.\[tracing\]"'
    with pytest.raises(RuntimeError, match=hint):  # an install line that works: the package is not on PyPI
        tracing.install(required=True)
    tracing.install(required=False)
    assert not tracing.active()
    assert "serving without tracing" in caplog.text
