"""Bad input gets a clear 4xx in the standard body, limits hold, and the next valid request still works."""

from __future__ import annotations

import base64
import io

import numpy as np
import onnx_models
import pytest
from PIL import Image

from vae_contract.imaging import encode_png

# Models built with onnx.helper, not trained: this file needs no torch.
models_dir, client = onnx_models.models_dir, onnx_models.client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _digit() -> bytes:
    return encode_png(np.zeros((1, 28, 28), dtype=np.float32))


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


DIGIT = _digit()
Z8 = [0.0] * 8

# (route, request kwargs, fragment of the error message)
BAD_REQUESTS = [
    ("/v1/sample", {"json": {"n": 0}}, "n:"),
    ("/v1/sample", {"json": {"n": 100000}}, "n: at most 256"),
    ("/v1/sample", {"json": {"n": "many"}}, "n:"),
    ("/v1/sample", {"json": {"temperature": 0}}, "temperature"),
    ("/v1/sample", {"json": {"temperature": 11}}, "temperature"),
    ("/v1/sample", {"json": {"seed": -1}}, "seed"),
    ("/v1/sample", {"json": {"seed": 2**64}}, "seed"),
    ("/v1/sample", {"json": {"n": 2, "surprise": True}}, "surprise: Extra inputs"),
    ("/v1/sample", {"json": {"model": "../../etc"}}, "model"),
    ("/v1/sample", {"json": [1, 2]}, "must be an object"),
    (
        "/v1/sample",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        "malformed JSON",
    ),
    ("/v1/decode", {"json": {}}, "latents: required"),
    ("/v1/decode", {"json": {"latents": []}}, "latents"),
    ("/v1/decode", {"json": {"latents": [[]]}}, "length 0"),
    ("/v1/decode", {"json": {"latents": Z8}}, "2-D"),
    ("/v1/decode", {"json": {"latents": [[0.0] * 7]}}, "length 7"),
    ("/v1/decode", {"json": {"latents": [Z8, [0.0] * 7]}}, "same length"),
    ("/v1/decode", {"json": {"latents": [[[0.0] * 8]]}}, "2-D"),
    ("/v1/decode", {"json": {"latents": [["0"] * 8]}}, "strings"),
    ("/v1/decode", {"json": {"latents": [[None] * 8]}}, "mixed or nested"),
    ("/v1/decode", {"json": {"latents": [[True] * 8]}}, "booleans"),
    ("/v1/decode", {"json": {"latents": "0,0"}}, "list of latent vectors"),
    ("/v1/decode", {"json": {"latents": [[1e308, *Z8[1:]]]}}, "|v| <= 100"),
    ("/v1/decode", {"json": {"latents": [[101.0, *Z8[1:]]]}}, "|v| <= 100"),
    ("/v1/decode", {"json": {"latents": [Z8] * 4097}}, "allowed 1 to 4096"),
    ("/v1/decode", {"json": {"latents": [Z8], "images": [b64(DIGIT)]}}, "not accepted here"),
    (
        "/v1/decode",
        {
            "content": b'{"latents": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}',
            "headers": {"content-type": "application/json"},
        },
        "malformed JSON",
    ),
    (
        "/v1/decode",
        {"content": b"\x93NUMPY garbage", "headers": {"content-type": "application/x-npy"}},
        ".npy",
    ),
    ("/v1/encode", {"json": {}}, "at least one image"),
    ("/v1/encode", {"json": {"images": []}}, "at least one image"),
    ("/v1/encode", {"json": {"images": "abc"}}, "list of base64"),
    ("/v1/encode", {"json": {"images": [1]}}, "list of base64"),
    ("/v1/encode", {"json": {"images": ["not base64!"]}}, "images[0]: invalid base64"),
    ("/v1/encode", {"json": {"images": [b64(DIGIT)[:-2]]}}, "invalid base64"),
    ("/v1/encode", {"json": {"images": ["data:image/png," + b64(DIGIT)]}}, "must be base64"),
    ("/v1/encode", {"json": {"images": [""]}}, "empty image"),
    ("/v1/encode", {"json": {"images": [b64(b"\x00" * 100)]}}, "only PNG and JPEG"),
    ("/v1/encode", {"json": {"images": [b64(_gif())]}}, "only PNG and JPEG"),
    ("/v1/encode", {"json": {"images": [b64(DIGIT[:40])]}}, "corrupt or truncated PNG"),
    ("/v1/encode", {"json": {"images": [b64(DIGIT), b64(b"junk")]}}, "images[1]"),
    ("/v1/encode", {"json": {"images": [b64(DIGIT)] * 257}}, "at most 256"),
    ("/v1/encode", {"json": {"images": [b64(DIGIT)], "latents": [Z8]}}, "not accepted here"),
    ("/v1/encode", {"files": [("other", ("a.png", DIGIT))]}, "upload images as 'files'"),
    ("/v1/encode", {"files": [("files", ("a.png", DIGIT))], "data": {"sample": "perhaps"}}, "sample"),
    ("/v1/interpolate", {"json": {"latents": [Z8]}}, "exactly 2"),
    ("/v1/interpolate", {"json": {"latents": [Z8, Z8], "images": [b64(DIGIT)] * 2}}, "either two images"),
    ("/v1/interpolate", {"json": {}}, "either two images"),
    ("/v1/interpolate", {"json": {"images": [b64(DIGIT)] * 3}}, "exactly 2"),
    ("/v1/interpolate", {"json": {"latents": [Z8, Z8], "steps": 1}}, "steps"),
    ("/v1/interpolate", {"json": {"latents": [Z8, Z8], "steps": 1000}}, "steps: at most 128"),
    ("/v1/interpolate", {"json": {"latents": [Z8, Z8], "method": "cubic"}}, "method"),
    (
        "/v1/reconstruct",
        {"json": {"images": [b64(b"\xff\xd8\xff\xe0 not really")]}},
        "corrupt or truncated JPEG",
    ),
]


@pytest.mark.parametrize(("route", "kwargs", "fragment"), BAD_REQUESTS)
def test_bad_input_is_a_clear_422(client, route, kwargs, fragment):
    r = client.post(route, **kwargs)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "invalid_input"
    assert fragment in body["error"], body["error"]
    assert "Traceback" not in r.text


def test_a_valid_request_works_after_bad_ones(client):
    for route, kwargs, _ in BAD_REQUESTS[::5]:
        client.post(route, **kwargs)
    assert client.post("/v1/encode", json={"images": [b64(DIGIT)]}).status_code == 200


def test_a_decompression_bomb_is_refused(client):
    # A ~100 KB PNG that claims 20000 x 20000 pixels; refused by our pixel cap before decoding.
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    r = client.post("/v1/encode", files=[("files", ("bomb.png", buf.getvalue()))])
    assert r.status_code == 422 and "too large" in r.json()["error"]


def test_query_parameters_are_validated(client):
    for url in (
        "/v1/manifold?model=tiny-2d&size=1",
        "/v1/manifold?model=tiny-2d&size=41",
        "/v1/manifold?size=x",
    ):
        r = client.get(url)
        assert r.status_code == 422 and r.json()["error_type"] == "invalid_input", url
    r = client.post("/v1/encode?output=everything", json={"images": [b64(DIGIT)]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "output"]


def test_unknown_model_is_404_and_unknown_route_is_404(client):
    r = client.post("/v1/sample", json={"model": "nope"})
    assert r.status_code == 404 and r.json()["error_type"] == "model_not_found"
    assert client.get("/v1/manifold?model=nope").status_code == 404
    r = client.get("/v2/nothing-here")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = client.get("/v1/sample")
    assert r.status_code == 405 and r.json()["error_type"] == "method_not_allowed"


def test_unsupported_content_type_is_415(client):
    r = client.post("/v1/sample", content=b"n=3", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error_type"] == "unsupported_media_type"
    r = client.post("/v1/encode", content=b"\x93NUMPY", headers={"content-type": "application/x-npy"})
    assert r.status_code == 415


def test_unknown_accept_falls_back_to_json(client):
    r = client.post("/v1/sample", json={"n": 1, "seed": 1}, headers={"accept": "text/html, */*;q=0.1"})
    assert r.headers["content-type"] == "application/json"
    r = client.post("/v1/sample", json={"n": 1}, headers={"accept": "image/png;q=0, application/json"})
    assert r.headers["content-type"] == "application/json"


def test_oversized_bodies_get_413(models_dir, serve_app):
    with serve_app(models_dir, max_body_bytes=4096) as small:
        big = {"images": [b64(b"x" * 5000)]}
        r = small.post("/v1/encode", json=big)  # declared by Content-Length
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
        assert r.headers["x-request-id"]

        def chunks():
            for _ in range(10):
                yield b"x" * 1000

        r = small.post("/v1/encode", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers  # really chunked
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
        files = [("files", (f"{i}.png", b"y" * 1000)) for i in range(5)]
        assert small.post("/v1/encode", files=files).status_code == 413
        assert small.post("/v1/encode", json={"images": [b64(DIGIT)]}).status_code == 200


def test_multipart_with_thousands_of_parts_is_refused(client):
    files = [("files", (f"{i}.png", DIGIT)) for i in range(300)]
    r = client.post("/v1/encode", files=files)
    assert r.status_code == 422 and "multipart" in r.json()["error"]
    fields = {f"f{i}": "1" for i in range(2000)}
    r = client.post("/v1/encode", files=[("files", ("a.png", DIGIT))], data=fields)
    assert r.status_code == 422
    assert client.post("/v1/encode", files=[("files", ("a.png", DIGIT))]).status_code == 200


def test_api_keys_guard_everything_but_health_and_metrics(models_dir, serve_app):
    with serve_app(models_dir, api_keys="k-one,k-two") as c:
        for path in ("/healthz", "/readyz", "/metrics", "/docs"):
            assert c.get(path).status_code == 200, path
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/sample", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/sample", headers={"x-api-key": "k-one-and-more"}).status_code == 401
        assert c.post("/v1/sample", headers={"authorization": "Bearer k-two"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": "k-one"}).status_code == 200
        assert "k-one" not in c.get("/metrics").text
        spec = c.get("/openapi.json").json()
        assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        assert (
            spec["paths"]["/v1/sample"]["post"]["security"]
            and "security" not in spec["paths"]["/healthz"]["get"]
        )
        preflight = {"origin": "https://x.example", "access-control-request-method": "POST"}
        assert c.options("/v1/sample", headers=preflight).status_code != 401


def test_cors_is_off_unless_configured(client, models_dir, serve_app):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/sample", headers=preflight).headers
    with serve_app(models_dir, cors_origins="https://app.example") as c:
        r = c.options("/v1/sample", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options("/v1/sample", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
