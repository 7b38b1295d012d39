"""Work is bounded before it starts, and client input never produces a 500: through the real HTTP stack.

Models are built with onnx.helper (tests/onnx_models.py), so this file needs no torch and no
training: `lin` is a linear VAE on 1x8x8 images with latent_dim 2; `boom` has the same shapes but overflows
to inf for ordinary inputs, as a real model pushed outside its range would.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx_models import write_model
from PIL import Image
from serving import until

from service.config import Settings
from service.inference.decode_pool import ImagePool
from service.main import create_app
from vae_contract.imaging import encode_png

pytestmark = pytest.mark.timeout(30)

NPY = {"content-type": "application/x-npy"}
GREY = encode_png(np.full((1, 8, 8), 0.5, dtype=np.float32))


@pytest.fixture(scope="module")
def onnx_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx-models")
    write_model(root, "lin")
    write_model(root, "boom", overflow=True)
    return root


def _settings(models_dir: Path, **overrides: Any) -> Settings:
    return Settings(**{"models_dir": models_dir, "provider": "cpu", "default_model": "lin", **overrides})


@pytest.fixture(scope="module")
def api(onnx_models_dir: Path) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(create_app(_settings(onnx_models_dir))) as client:
        yield client


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def _error(r: httpx.Response, status: int, fragment: str, error_type: str = "invalid_input") -> None:
    assert r.status_code == status, r.text[:300]
    body = r.json()
    assert body["error_type"] == error_type, body
    assert fragment in body["error"], body["error"]
    assert r.headers["x-request-id"]


def _oip(client: Any, model: str, body: Any, **kwargs: Any) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", content=json.dumps(body).encode(), **kwargs)


Z = {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}


# --- response size ------------------------------------------------------------------------------------------


def test_an_output_named_twice_is_refused(api):
    outputs = [{"name": "x"}] * 10_000
    _error(_oip(api, "lin-decoder", {"inputs": [Z], "outputs": outputs}), 400, "requested more than once")


def test_responses_are_bounded_before_any_work(onnx_models_dir):
    from starlette.testclient import TestClient

    # One 1x8x8 image: 64 floats, 1 KiB as JSON numbers, 256 B as binary, 384 B as a PNG's upper bound.
    with TestClient(create_app(_settings(onnx_models_dir, max_response_bytes=20_000))) as c:
        big = {"name": "z", "shape": [100, 2], "datatype": "FP32", "data": [0.0] * 200}
        _error(_oip(c, "lin-decoder", {"inputs": [big]}), 400, "at most 20000 (VAE_MAX_RESPONSE_BYTES)")
        binary = {"inputs": [big], "parameters": {"binary_data_output": True}}
        _error(_oip(c, "lin-decoder", binary), 400, "would take up to 26624 bytes")  # 1024 + 100*64*4
        small = {"name": "z", "shape": [10, 2], "datatype": "FP32", "data": [0.0] * 20}
        assert _oip(c, "lin-decoder", {"inputs": [small]}).status_code == 200
        _error(c.post("/v1/sample", json={"n": 100}), 422, "VAE_MAX_RESPONSE_BYTES")
        _error(c.post("/v1/decode", json={"latents": [[0.0, 0.0]] * 100}), 422, "VAE_MAX_RESPONSE_BYTES")
        _error(c.get("/v1/manifold?size=40"), 422, "VAE_MAX_RESPONSE_BYTES")
        assert c.post("/v1/sample", json={"n": 10}).status_code == 200


# --- images -------------------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_256_small_files_claiming_4000x4000_are_refused_from_their_headers(api):
    claim = _png("L", (4000, 4000))  # ~16 KB of zlib, 16 M pixels once decoded
    assert len(claim) < 64 * 1024
    files = [("files", (f"{i}.png", claim, "image/png")) for i in range(256)]
    _error(api.post("/v1/encode", files=files), 422, "VAE_MAX_REQUEST_IMAGE_BYTES")
    assert api.post("/v1/encode", files=[("files", ("a.png", GREY))]).status_code == 200


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("mode", "size", "count", "fragment"),
    [
        ("L", (5000, 5000), 1, "images[0]: image too large: 5000x5000 exceeds 16000000 pixels"),
        (
            "I;16",
            (2000, 2000),
            9,
            "decoding them would take 72002304 bytes",
        ),  # 9 * 4e6 px * 2 B + 9 * 64 * 4 B
        (
            "RGBA",
            (2000, 2000),
            5,
            "decoding them would take 80001280 bytes",
        ),  # 5 * 4e6 px * 4 B + 5 * 64 * 4 B
    ],
)
def test_pixel_budgets_count_size_and_bit_depth(api, mode, size, count, fragment):
    files = [("files", (f"{i}.png", _png(mode, size), "image/png")) for i in range(count)]
    _error(api.post("/v1/reconstruct", files=files), 422, fragment)


# --- the decoding pool: bounded, and cancelled with its request ---------------------------------------------


class _Gate:
    """A one-thread executor whose thread is held until `open()`: jobs queue behind it."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1)
        self._event = threading.Event()
        self.executor.submit(self._event.wait, 20)

    def open(self) -> None:
        self._event.set()


def _run(settings: Settings, pool: ImagePool, scenario: Any) -> Any:
    async def main() -> Any:
        app = create_app(settings)
        app.state.image_pool = pool  # the seam routes get their pool from
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=20) as client:
                return await scenario(app, client)

    return asyncio.run(main())


def test_a_full_decoding_queue_answers_503_with_retry_after(onnx_models_dir):
    gate = _Gate()
    pool = ImagePool(1, max_pending=3, retry_after_s=7, executor=gate.executor)
    files = [("files", ("a.png", GREY, "image/png"))]

    async def scenario(app: Any, client: httpx.AsyncClient) -> Any:
        first = asyncio.create_task(client.post("/v1/encode", files=files))
        await until(lambda: pool.pending == 2)  # its header pass and its image hold 2 of 3 slots
        second = await client.post("/v1/encode", files=files)
        gate.open()
        return second, await first

    second, first = _run(_settings(onnx_models_dir, max_images_per_request=2, image_decode_queue=3), pool,
                         scenario)  # fmt: skip
    _error(second, 503, "image decoding is at capacity", "overloaded")
    assert second.headers["retry-after"] == "7"
    assert first.status_code == 200 and pool.pending == 0


def test_the_request_timeout_covers_decoding_and_drops_the_queued_work(onnx_models_dir):
    gate = _Gate()
    pool = ImagePool(1, max_pending=1024, executor=gate.executor)
    files = [("files", (f"{i}.png", GREY, "image/png")) for i in range(4)]

    async def scenario(app: Any, client: httpx.AsyncClient) -> Any:
        r = await client.post("/v1/encode", files=files)
        pending = pool.pending  # while the gate still holds the only thread: nothing of it ever ran
        gate.open()
        return r, pending

    r, pending = _run(_settings(onnx_models_dir, request_timeout_s=0.3), pool, scenario)
    _error(r, 504, "did not finish within 0.3 s", "timeout")
    assert pending == 0


def test_the_request_timeout_covers_reading_a_stalled_body(onnx_models_dir):
    pool = ImagePool(1, max_pending=16)
    never = asyncio.Event

    async def scenario(app: Any, client: httpx.AsyncClient) -> Any:
        stall = never()

        async def body() -> Any:
            yield b'{"latents": [[0.0, '
            await stall.wait()  # the client stops sending; set only after the answer came
            yield b"0.0]]}"

        r = await client.post("/v1/decode", content=body(), headers={"content-type": "application/json"})
        stall.set()
        return r

    r = _run(_settings(onnx_models_dir, request_timeout_s=0.3), pool, scenario)
    _error(r, 504, "did not finish within 0.3 s", "timeout")


def test_a_client_that_disconnects_takes_its_queued_images_with_it(onnx_models_dir):
    gate = _Gate()
    pool = ImagePool(1, max_pending=1024, executor=gate.executor)
    boundary = "b0undary"
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + GREY + b"\r\n"  # fmt: skip
    body = part * 8 + f"--{boundary}--\r\n".encode()

    async def main() -> tuple[int, list[str]]:
        app = create_app(_settings(onnx_models_dir))
        app.state.image_pool = pool
        sent: list[str] = []
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/encode", "raw_path": b"/v1/encode", "query_string": b"",
            "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
            "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                        (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        async with app.router.lifespan_context(app):
            call = asyncio.create_task(app(scope, receive, send))
            await until(lambda: pool.pending == 9)  # the header pass and 8 images, all queued
            gone.set()  # the client goes away
            await call
            pending = pool.pending
        gate.open()
        return pending, sent

    pending, sent = asyncio.run(main())
    assert pending == 0  # dropped from the queue without running
    assert "http.response.start" not in sent  # nobody to answer


# --- client input never produces a 500 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": [Z], "parameters": []}, "request parameters must be a JSON object"),
        ({"inputs": [Z], "parameters": "binary"}, "request parameters must be a JSON object"),
        ({"inputs": [Z], "parameters": {"binary_data_output": "yes"}}, "must be true or false"),
        ({"inputs": [Z], "outputs": [{"name": "x", "parameters": 5}]}, "output 'x' parameters must be"),
        ({"inputs": [Z], "outputs": [{"name": "x", "parameters": {"binary_data": 1}}]}, "true or false"),
        ({"inputs": [Z], "outputs": [{"name": ["x"]}]}, "unknown output"),
        ({"inputs": [{**Z, "parameters": "x"}]}, "input 'z' parameters must be a JSON object"),
        ({"inputs": [{**Z, "parameters": {"binary_data_size": "8"}}]}, "binary_data_size"),
        ({"inputs": [Z], "id": 5}, "id must be a string"),
        ({"inputs": [Z], "id": {"nested": [1]}}, "id must be a string"),
        ({"inputs": [{**Z, "data": "0,0"}]}, "must be a list of numbers"),
        ({"inputs": [{**Z, "data": [True, False]}]}, "must be numbers"),
        ({"inputs": [{**Z, "data": [0, [0]]}]}, "must be numbers"),
        ({"inputs": [{**Z, "data": ["0", "0"]}]}, "must be numbers"),
        ({"inputs": [{**Z, "data": [1e39, 0.0]}]}, "NaN or Inf"),
        ({"inputs": [{**Z, "shape": [2**70, 2]}]}, "a list of integers"),
        ({"inputs": [{**Z, "shape": [10**9, 2]}]}, "batch of 1000000000 exceeds the limit of 4096"),
        ({"inputs": [{**Z, "shape": [0, 2], "data": []}]}, "at least 1"),
    ],
)
def test_mistyped_oip_fields_are_400(api, body, fragment):
    _error(_oip(api, "lin-decoder", body), 400, fragment)


def test_encoder_inputs_outside_the_pixel_range_are_400(api):
    x = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [3e38] * 64}
    _error(_oip(api, "lin-encoder", {"inputs": [x]}), 400, "pixel range [0, 1]")


def test_outputs_that_overflow_are_client_errors_not_nan_or_500(api, caplog):
    z = {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 1.0]}
    _error(_oip(api, "boom-decoder", {"inputs": [z]}), 400, "decoder produced NaN or Inf")
    x = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}
    _error(_oip(api, "boom-encoder", {"inputs": [x]}), 400, "encoder produced NaN or Inf")
    _error(api.post("/v1/decode", json={"latents": [[1.0, 1.0]], "model": "boom"}), 422, "decoder produced")
    files = [("files", ("a.png", GREY, "image/png"))]
    _error(api.post("/v1/reconstruct", files=files, data={"model": "boom"}), 422, "encoder produced")
    _error(api.post("/v1/sample", json={"model": "boom", "n": 2, "seed": 1}), 422, "decoder produced")
    assert "Traceback" not in caplog.text
    assert api.post("/v1/decode", json={"latents": [[1.0, 1.0]], "model": "lin"}).status_code == 200


def _npy_header(shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False, version: int = 1) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    if version == 1:
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_npy_header((10**12, 2)) + b"\0" * 32, "1000000000000 vectors; allowed 1 to 4096"),
        (_npy_header((1, 10**12)) + b"\0" * 32, "needs 4000000000000 bytes of data, the body has 32"),
        (_npy_header((2**62, 2**62)) + b"\0" * 32, "vectors; allowed 1 to 4096"),
        (_npy_header((4, 2)) + b"\0" * 16, "needs 32 bytes"),
        (_npy_header((1, 2, 3)) + b"\0" * 24, "2-D"),
        (_npy_header((1, 2), descr="|O") + b"\0" * 16, "expected numbers"),
        (_npy_header((1, 2), descr="<U8") + b"\0" * 64, "expected numbers, got strings"),
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 65535, "invalid .npy body"),
        (b"\x93NUMPY\x09\x00" + b"\0" * 10, "invalid .npy body"),
        (b"\x93NUMP", "invalid .npy body"),
    ],
)
def test_npy_bodies_are_refused_from_their_header(api, body, fragment):
    _error(api.post("/v1/decode", content=body, headers=NPY), 422, fragment)


def test_npy_bodies_in_every_layout_decode_alike(api):
    z = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    want = api.post("/v1/decode", json={"latents": z.tolist()}, headers={"accept": "application/x-npy"})
    bodies = [
        _npy_header((2, 2)) + z.tobytes(),
        _npy_header((2, 2), version=2) + z.tobytes(),
        _npy_header((2, 2), fortran=True) + z.T.tobytes(),  # column-major data
        _npy_header((2, 2), descr=">f8") + z.astype(">f8").tobytes(),
    ]
    for body in bodies:
        r = api.post("/v1/decode", content=body, headers={**NPY, "accept": "application/x-npy"})
        assert r.status_code == 200, r.text
        assert r.content == want.content
