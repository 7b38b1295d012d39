"""The Open Inference Protocol over gRPC: Triton's client against a live server, status codes, API keys,
deadlines, cancellation, overload and metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import numpy as np
import onnx_models
import pytest
from serving import free_port, wait_until

from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.main import create_app

# Models built with onnx.helper (tests/onnx_models.py): no torch, no training.
models_dir = onnx_models.models_dir

pytestmark = pytest.mark.timeout(120)


@contextmanager
def grpc_app(settings) -> Iterator[tuple[Any, pb_grpc.GRPCInferenceServiceStub]]:
    """The app's lifespan (models, batchers, gRPC server) on an event loop in a thread; yields the app and a
    stub on a channel to its gRPC port."""
    app = create_app(settings)
    started, stop = threading.Event(), None
    failure: list[BaseException] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with app.router.lifespan_context(app):
                started.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60) and not failure, failure
    channel = grpc.insecure_channel(f"127.0.0.1:{app.state.service.grpc_port}")
    try:
        yield app, pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        channel.close()
        loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        thread.join(timeout=30)


def decode_request(z: np.ndarray, model: str = "tiny-decoder", **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="z", datatype="FP32", shape=list(z.shape))
    request.raw_input_contents.append(np.ascontiguousarray(z, dtype="<f4").tobytes())
    return request


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


def counted(app, method: str, status: int) -> float:
    value = app.state.service.metrics.registry.get_sample_value(
        "vae_http_requests_total", {"route": f"grpc:{method}", "method": "GRPC", "status": str(status)}
    )
    return value or 0.0


def test_tritonclient_grpc_against_a_live_server(models_dir, settings_for, live, mnist_digits):
    oip = pytest.importorskip("tritonclient.grpc")
    port = free_port()
    auth = {"authorization": "Bearer s3cret"}
    z = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with live(settings_for(models_dir, grpc_port=port, api_keys="s3cret")) as url:
        triton = oip.InferenceServerClient(f"127.0.0.1:{port}")
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.is_model_ready("tiny-decoder", headers=auth)
        assert not triton.is_model_ready("nothing-decoder", headers=auth)
        meta = triton.get_model_metadata("tiny-decoder", headers=auth, as_json=True)
        assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", "8"]}]
        assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert triton.get_server_metadata(headers=auth).name == "vae-service"

        tensor = oip.InferInput("z", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z)
        answer = triton.infer("tiny-decoder", [tensor], request_id="r1", headers=auth)
        images = answer.as_numpy("x")
        assert answer.get_response().id == "r1" and answer.get_response().model_version == "1"

        x = mnist_digits[0][:3].astype(np.float32)
        pixels = oip.InferInput("x", list(x.shape), "FP32")
        pixels.set_data_from_numpy(x)
        wanted = [oip.InferRequestedOutput("mean")]
        encoded = triton.infer("tiny-encoder", [pixels], outputs=wanted, headers=auth, model_version="1")
        assert encoded.as_numpy("mean").shape == (3, 8) and encoded.as_numpy("log_var") is None

        with pytest.raises(oip.InferenceServerException) as info:
            triton.infer("nothing-decoder", [tensor], headers=auth)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(oip.InferenceServerException) as info:
            triton.infer("tiny-decoder", [tensor])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        triton.close()

        rest = httpx.post(
            f"{url}/v1/decode", json={"latents": z.tolist(), "model": "tiny"},
            headers={"accept": "application/x-npy", **auth},
        )  # fmt: skip
    assert images.shape == (4, 1, 28, 28) and images.dtype == np.float32
    np.testing.assert_allclose(images, np.load(io.BytesIO(rest.content)), atol=1e-6)


def test_status_codes_for_bad_input_and_unknown_models(models_dir, settings_for):
    z = np.zeros((2, 8), np.float32)
    with grpc_app(settings_for(models_dir, grpc_port=free_port(), max_latents_per_request=4)) as (app, stub):
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="tiny-encoder", version="1")).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="tiny-encoder", version="2")).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny-encoder"))
        assert [(t.name, list(t.shape)) for t in meta.outputs] == [("mean", [-1, 8]), ("log_var", [-1, 8])]

        typed = pb.ModelInferRequest(model_name="tiny-decoder")
        typed.inputs.add(name="z", datatype="FP32", shape=[2, 8]).contents.fp32_contents.extend([0.0] * 16)
        answer = stub.ModelInfer(typed)
        assert [o.name for o in answer.outputs] == ["x"] and list(answer.outputs[0].shape) == [2, 1, 28, 28]
        raw = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 1, 28, 28)
        np.testing.assert_array_equal(raw[0], raw[1])  # same latent, same image

        not_found = grpc.StatusCode.NOT_FOUND
        assert code_of(stub.ModelMetadata, pb.ModelMetadataRequest(name="nothing-encoder"))[0] == not_found
        assert code_of(stub.ModelInfer, decode_request(z, "nothing-decoder"))[0] == not_found
        assert code_of(stub.ModelInfer, decode_request(z, "tiny"))[0] == not_found
        code, details = code_of(stub.ModelInfer, decode_request(z, model_version="9"))
        assert code == not_found and "version" in details

        bad = grpc.StatusCode.INVALID_ARGUMENT
        wrong_name = decode_request(z)
        wrong_name.inputs[0].name = "x"
        wrong_shape = decode_request(np.zeros((2, 7), np.float32))
        short = decode_request(z)
        short.raw_input_contents[0] = b"\0" * 12
        nan = decode_request(np.full((1, 8), np.nan, np.float32))
        huge = decode_request(np.full((1, 8), 1e6, np.float32))
        too_many = decode_request(np.zeros((5, 8), np.float32))
        fp64 = decode_request(z)
        fp64.inputs[0].datatype = "FP64"
        both = decode_request(z)
        both.inputs[0].contents.fp32_contents.extend([0.0] * 16)
        missing_output = decode_request(z)
        missing_output.outputs.add(name="y")
        pixels = pb.ModelInferRequest(model_name="tiny-encoder")
        pixels.inputs.add(name="x", datatype="FP32", shape=[1, 1, 28, 28])
        pixels.raw_input_contents.append(np.full(784, 7.0, "<f4").tobytes())  # outside the pixel range
        cases = {
            "unexpected input": wrong_name, "expected [batch, 8]": wrong_shape, "12 bytes": short,
            "NaN": nan, "|v|": huge, "limit of 4": too_many, "FP32": fp64, "not both": both,
            "unknown output": missing_output, "pixel range": pixels,
        }  # fmt: skip
        for words, request in cases.items():
            code, details = code_of(stub.ModelInfer, request)
            assert code == bad and words in details, (words, code, details)
        assert counted(app, "ModelInfer", 422) == len(cases)
        assert counted(app, "ModelInfer", 404) == 3 and counted(app, "ModelMetadata", 404) == 1
        assert counted(app, "ModelInfer", 200) == 1


@contextmanager
def blocked_decoder(app) -> Iterator[tuple[threading.Event, list[int]]]:
    """The tiny decoder's onnxruntime call waits for `release`; `runs` records each call's batch size."""
    batcher = app.state.service.registry.get("tiny").decoder_batcher
    original, release, runs = batcher._run_fn, threading.Event(), []

    def run(x):
        runs.append(len(x))
        release.wait(30)
        return original(x)

    batcher._run_fn = run
    try:
        yield release, runs
    finally:
        release.set()
        batcher._run_fn = original


def test_deadline_cancellation_and_overload(models_dir, settings_for):
    limits = dict(
        max_latents_per_request=4, max_images_per_request=4, max_sample_n=4, max_interpolate_steps=4,
        max_manifold_size=2, max_queue=4, max_batch_size=4, inline_run_us=0,
    )  # fmt: skip
    z = np.zeros((4, 8), np.float32)
    with grpc_app(settings_for(models_dir, grpc_port=free_port(), **limits)) as (app, stub):
        batcher = app.state.service.registry.get("tiny").decoder_batcher

        def abandoned() -> bool:  # every queued job's caller is gone (server side)
            return all(job.future.done() for job in batcher._queue)

        with blocked_decoder(app) as (release, runs):
            first = stub.ModelInfer.future(decode_request(z))  # runs, and blocks the decoder
            wait_until(lambda: runs == [4])
            # A deadline that passes while queued: DEADLINE_EXCEEDED, and the job is dropped (its queue
            # slots given back at once).
            code, _ = code_of(stub.ModelInfer, decode_request(z[:2]), timeout=0.3)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            wait_until(lambda: batcher.queued_items == 0 and abandoned())
            # A call the client cancels while queued: dropped too.
            cancelled = stub.ModelInfer.future(decode_request(z[:2]))
            wait_until(lambda: batcher.queued_items == 2)
            cancelled.cancel()
            wait_until(lambda: batcher.queued_items == 0 and abandoned())
            # The queue holds 4 items (max_queue): with a call of 4 waiting, one more is refused at once.
            waiting = stub.ModelInfer.future(decode_request(z))
            wait_until(lambda: batcher.queued_items == 4)
            code, details = code_of(stub.ModelInfer, decode_request(z[:1]))
            assert code == grpc.StatusCode.UNAVAILABLE and "overloaded" in details
            release.set()
            assert len(first.result(timeout=30).raw_output_contents[0]) == 4 * 784 * 4
            assert len(waiting.result(timeout=30).raw_output_contents[0]) == 4 * 784 * 4
        assert runs == [4, 4]  # neither the expired nor the cancelled call reached onnxruntime
        assert counted(app, "ModelInfer", 503) == 1
        assert list(stub.ModelInfer(decode_request(z[:1])).outputs[0].shape) == [1, 1, 28, 28]


def test_api_keys_as_metadata(models_dir, settings_for):
    z = np.zeros((1, 8), np.float32)
    with grpc_app(settings_for(models_dir, grpc_port=free_port(), api_keys="k1,k2")) as (app, stub):
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # health stays open
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        assert code_of(stub.ModelInfer, decode_request(z))[0] == unauthenticated
        assert code_of(stub.ServerMetadata, pb.ServerMetadataRequest())[0] == unauthenticated
        wrong = (("authorization", "Bearer nope"),)
        assert code_of(stub.ModelInfer, decode_request(z), metadata=wrong)[0] == unauthenticated
        for metadata in ((("authorization", "Bearer k1"),), (("x-api-key", "k2"),)):
            assert stub.ModelInfer(decode_request(z), metadata=metadata).outputs[0].name == "x"
        assert counted(app, "ModelInfer", 401) == 2 and counted(app, "ModelInfer", 200) == 2


def test_grpc_off_imports_nothing(models_dir):
    import subprocess
    import sys

    script = f"""
import asyncio, sys
from service.config import Settings
from service.main import create_app
app = create_app(Settings(models_dir={str(models_dir)!r}, provider="cpu", grpc_port=0))
async def main():
    async with app.router.lifespan_context(app):
        assert app.state.service.registry.ready
asyncio.run(main())
assert "grpc" not in sys.modules, "grpc imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_pinned_versions_across_a_live_reload(tmp_path, live):
    """v1 is served; v2 (both weight matrices doubled) appears on disk and the poller loads it beside v1.
    Unpinned requests move to v2; requests pinned to v1, over REST embeddings and gRPC alike, get v1's exact
    vectors before and after. The linear encoder makes v2's means exactly 2x v1's (a power of two)."""
    from test_version_routes import publish

    from service.config import Settings
    from vae_contract.imaging import encode_png

    models = tmp_path / "models"
    publish(models, 1)
    # 8-bit values, so the PNGs for REST and the raw floats for gRPC hold the same pixels
    pixels = (np.random.default_rng(3).integers(0, 256, (2, 1, 8, 8)) / 255).astype(np.float32)
    inputs = [base64.b64encode(encode_png(p)).decode() for p in pixels]
    port = free_port()
    settings = Settings(models_dir=models, provider="cpu", grpc_port=port, reload_interval_s=0.2)

    def embeddings(client: httpx.Client, model: str) -> tuple[str, np.ndarray]:
        body = client.post("/v1/embeddings", json={"model": model, "input": inputs}).json()
        return body["model"], np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)

    def grpc_means(stub, version: str) -> tuple[str, np.ndarray]:
        request = pb.ModelInferRequest(model_name="lin-encoder", model_version=version)
        request.inputs.add(name="x", datatype="FP32", shape=[2, 1, 8, 8])
        request.raw_input_contents.append(np.ascontiguousarray(pixels, "<f4").tobytes())
        request.outputs.add(name="mean")
        answer = stub.ModelInfer(request)
        return answer.model_version, np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 2)

    with live(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert embeddings(client, "lin")[0] == "lin@1"
        _, v1 = embeddings(client, "lin@1")
        assert grpc_means(stub, "")[0] == "1"
        _, g1 = grpc_means(stub, "1")
        np.testing.assert_allclose(g1, v1, rtol=1e-5)  # one model, two transports

        publish(models, 2)
        wait_until(lambda: embeddings(client, "lin")[0] == "lin@2", timeout_s=30)

        _, v2 = embeddings(client, "lin")
        np.testing.assert_array_equal(v2, 2 * v1)
        np.testing.assert_array_equal(embeddings(client, "lin@1")[1], v1)  # pinned: v1's exact vectors
        version, g2 = grpc_means(stub, "")
        assert version == "2"
        np.testing.assert_array_equal(g2, 2 * g1)
        version, pinned = grpc_means(stub, "1")
        assert version == "1"
        np.testing.assert_array_equal(pinned, g1)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="lin-encoder"))
        assert list(meta.versions) == ["1", "2"]
        code, details = code_of(stub.ModelMetadata, pb.ModelMetadataRequest(name="lin-encoder", version="3"))
        assert code == grpc.StatusCode.NOT_FOUND and "loaded: [1, 2]" in details
        assert client.post("/v1/embeddings", json={"model": "lin@3", "input": inputs}).status_code == 404
        channel.close()


def test_generated_modules_match_the_proto(tmp_path):
    """The committed *_pb2*.py files are what scripts/gen_grpc.sh makes from the committed .proto."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("grpc_tools")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    subprocess.run(
        ["bash", "scripts/gen_grpc.sh"], cwd=root, env=env, check=True, capture_output=True, timeout=60
    )
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py"):
        made = (tmp_path / "service" / "grpc" / name).read_bytes()
        assert made == (root / "service" / "grpc" / name).read_bytes(), (
            f"{name} is stale: run scripts/gen_grpc.sh"
        )


def test_a_port_in_use_stops_startup_with_a_clear_error(models_dir, settings_for):
    import socket

    from service.inference import ModelRegistry
    from service.metrics import Metrics

    with socket.socket() as taken:  # a listener without SO_REUSEPORT: nothing else can bind beside it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = settings_for(models_dir, grpc_port=taken.getsockname()[1])

        async def start() -> None:
            from service.grpc.server import start as start_grpc

            await start_grpc(ModelRegistry(settings, Metrics()), settings, Metrics())

        with pytest.raises(RuntimeError, match=r"cannot bind .*VAE_GRPC_PORT"):
            asyncio.run(start())
