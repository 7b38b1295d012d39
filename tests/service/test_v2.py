"""The Open Inference Protocol routes, with requests shaped as the specification's examples shape them."""

from __future__ import annotations

import json

import numpy as np
import onnx_models
import pytest

# Models built with onnx.helper, not trained: this file needs no torch.
models_dir, client = onnx_models.models_dir, onnx_models.client


def _infer(client, model, payload, **kwargs):
    return client.post(f"/v2/models/{model}/infer", json=payload, **kwargs)


def _binary_request(header: dict, *tensors: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    body = head + b"".join(np.ascontiguousarray(t, dtype="<f4").tobytes() for t in tensors)
    return body, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def _binary_response(response) -> tuple[dict, bytes]:
    n = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:n]), response.content[n:]


def test_server_health_and_metadata(client):
    meta = client.get("/v2").json()
    assert meta["name"] == "vae-service" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    enc = client.get("/v2/models/tiny-encoder").json()
    assert enc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in enc["outputs"]] == ["mean", "log_var"]
    assert enc["outputs"][0]["shape"] == [-1, 8] and enc["versions"] == ["1"]
    dec = client.get("/v2/models/tiny-decoder/versions/1").json()
    assert dec["inputs"][0] == {"name": "z", "datatype": "FP32", "shape": [-1, 8]}
    assert client.get("/v2/models/tiny-decoder/ready").json() == {"name": "tiny-decoder", "ready": True}
    assert client.get("/v2/models/tiny-2d-decoder/versions/1/ready").status_code == 200


@pytest.mark.parametrize(
    "path", ["/v2/models/nope-decoder", "/v2/models/tiny", "/v2/models/tiny-decoder/versions/9"]
)
def test_unknown_models_and_versions(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "error" in response.json()


def test_decoder_matches_v1_with_nested_and_flat_data(client):
    latents = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    v1 = client.post(
        "/v1/decode",
        json={"latents": latents.tolist(), "model": "tiny"},
        headers={"Accept": "application/x-npy"},
    )
    expected = np.load(__import__("io").BytesIO(v1.content))
    nested = _infer(
        client,
        "tiny-decoder",
        {
            "id": "42",
            "inputs": [{"name": "z", "shape": [3, 8], "datatype": "FP32", "data": latents.tolist()}],
        },
    )
    assert nested.status_code == 200, nested.text
    body = nested.json()
    assert body["id"] == "42" and body["model_name"] == "tiny-decoder" and body["model_version"] == "1"
    (out,) = body["outputs"]
    assert out["name"] == "x" and out["datatype"] == "FP32" and out["shape"] == [3, 1, 28, 28]
    np.testing.assert_allclose(
        np.array(out["data"], dtype=np.float32).reshape(3, 1, 28, 28), expected, atol=1e-6
    )
    flat = _infer(
        client,
        "tiny-decoder",
        {"inputs": [{"name": "z", "shape": [3, 8], "datatype": "FP32", "data": latents.ravel().tolist()}]},
    )
    assert flat.json()["outputs"][0]["data"] == out["data"]


def test_encoder_output_selection_matches_v1(client, mnist_digits, digit_pngs):
    x = mnist_digits[0][:2]
    v1 = client.post(
        "/v1/encode", files=[("files", ("a.png", digit_pngs[0])), ("files", ("b.png", digit_pngs[1]))]
    )
    response = _infer(
        client,
        "tiny-encoder",
        {
            "inputs": [
                {"name": "x", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}
            ],
            "outputs": [{"name": "log_var"}],
        },
    )
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["log_var"]
    np.testing.assert_allclose(
        np.array(outputs[0]["data"]).reshape(2, 8), np.array(v1.json()["log_var"]), atol=1e-4
    )


def test_binary_tensors_in_and_out(client):
    latents = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    header = {
        "inputs": [
            {
                "name": "z",
                "shape": [4, 8],
                "datatype": "FP32",
                "parameters": {"binary_data_size": latents.nbytes},
            }
        ],
        "outputs": [{"name": "x", "parameters": {"binary_data": True}}],
    }
    body, headers = _binary_request(header, latents)
    response = client.post("/v2/models/tiny-decoder/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    head, raw = _binary_response(response)
    (out,) = head["outputs"]
    assert out["parameters"]["binary_data_size"] == len(raw) == 4 * 784 * 4 and "data" not in out
    images = np.frombuffer(raw, dtype="<f4").reshape(out["shape"])
    json_out = _infer(
        client,
        "tiny-decoder",
        {"inputs": [{"name": "z", "shape": [4, 8], "datatype": "FP32", "data": latents.tolist()}]},
    ).json()
    np.testing.assert_array_equal(images.ravel(), np.array(json_out["outputs"][0]["data"], dtype=np.float32))
    # Request-level binary_data_output applies to every output.
    body, headers = _binary_request(
        {**header, "outputs": None, "parameters": {"binary_data_output": True}}, latents
    )
    head, raw = _binary_response(client.post("/v2/models/tiny-decoder/infer", content=body, headers=headers))
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(raw)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"inputs": [{"name": "z", "shape": [1, 7], "datatype": "FP32", "data": [0.0] * 7}]},
            "expected [batch, 8]",
        ),
        ({"inputs": [{"name": "z", "shape": [1, 8], "datatype": "INT64", "data": [0] * 8}]}, "datatype FP32"),
        ({"inputs": [{"name": "z", "shape": [2, 8], "datatype": "FP32", "data": [0.0] * 8}]}, "needs 16"),
        (
            {"inputs": [{"name": "q", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]},
            "unexpected input",
        ),
        (
            {"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": ["a"] * 8}]},
            "must be numbers",
        ),
        ({"inputs": []}, "exactly one input"),
        (
            {
                "inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}],
                "outputs": [{"name": "nope"}],
            },
            "unknown output",
        ),
        (
            {"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [1e30] * 8}]},
            "|v| <= 100",
        ),
        (
            {"inputs": [{"name": "z", "shape": "1,8", "datatype": "FP32", "data": [0.0] * 8}]},
            "list of integers",
        ),
    ],
)
def test_bad_requests_are_400_with_an_error(client, payload, message):
    response = _infer(client, "tiny-decoder", payload)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert client.post("/v1/sample", json={"n": 1, "model": "tiny"}).status_code == 200  # still serving


def test_bad_binary_framing_is_400(client):
    header = {
        "inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]
    }
    body, headers = _binary_request(header, np.zeros(4, dtype=np.float32))  # 16 bytes, not 32
    response = client.post("/v2/models/tiny-decoder/infer", content=body, headers=headers)
    assert response.status_code == 400 and "binary_data_size" in response.json()["error"]
    response = client.post(
        "/v2/models/tiny-decoder/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"}
    )
    assert response.status_code == 400
    nan = b'{"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 1e999]}]}'
    response = client.post("/v2/models/tiny-2d-decoder/infer", content=nan)
    assert response.status_code == 400
