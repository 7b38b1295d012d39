"""Versions over HTTP: `/v1/*` pinned with `version` or `name@version`, `/v2/models/{m}/versions/{v}` answered
by that version, every answer naming its version (body and `X-Model-Version`), 404 naming the loaded ones.

Two versions of a linear model built with onnx.helper (see onnx_models.py) whose weights differ, so each
version's vectors are recognisable and computable by hand: mean = flatten(x) @ W_e, x' = sigmoid(z @ W_d).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_models import write_model
from starlette.testclient import TestClient

from service.config import Settings
from service.main import create_app
from vae_contract.imaging import encode_png
from vae_contract.manifest import sha256_file

pytestmark = pytest.mark.timeout(120)

NAME = "lin"
IMAGE = (1, 8, 8)
NPY = "application/x-npy"
Z = np.array([[0.5, -1.0], [1.5, 0.25]], dtype=np.float32)


def _weights(folder: Path, graph: str, init: str) -> np.ndarray:
    model = onnx.load(str(folder / f"{graph}.onnx"))
    (tensor,) = (t for t in model.graph.initializer if t.name == init)
    return numpy_helper.to_array(tensor)


def publish(models: Path, version: int) -> Path:
    """models/lin/<version>/: version 1 as onnx_models writes it; later versions with both weight matrices
    scaled by `version` (so their means and images differ), staged beside and renamed in as an export does."""
    staging = models.parent / f".staging-{models.name}-{version}"
    folder = write_model(staging, NAME, latent_dim=2, image=IMAGE, version=version)
    manifest = json.loads((folder / "model.json").read_text())
    for graph, init in (("encoder", "w_enc"), ("decoder", "w_dec")):
        path = folder / f"{graph}.onnx"
        model = onnx.load(str(path))
        for tensor in model.graph.initializer:
            if tensor.name == init:
                scaled = numpy_helper.to_array(tensor) * np.float32(version)
                tensor.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), init))
        onnx.save(model, str(path))
        manifest[graph]["sha256"] = sha256_file(path)
    (folder / "model.json").write_text(json.dumps(manifest))
    target = models / NAME / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    shutil.rmtree(staging)
    return target


def settings(models: Path) -> Settings:
    # No reload polling: the tests call registry.reload() themselves, when they publish.
    return Settings(models_dir=models, provider="cpu", grpc_port=0, reload_interval_s=0)


def images(n: int = 2) -> tuple[list[str], np.ndarray]:
    """n 8x8 grey PNGs (base64) and the float pixels the service decodes them to (PNG is 8-bit)."""
    rng = np.random.default_rng(7)
    pixels = np.round(rng.random((n, *IMAGE)) * 255) / 255
    return [base64.b64encode(encode_png(p)).decode() for p in pixels], pixels.astype(np.float32)


def expected_mean(folder: Path, pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1) @ _weights(folder, "encoder", "w_enc")


def expected_images(folder: Path, z: np.ndarray) -> np.ndarray:
    logits = z @ _weights(folder, "decoder", "w_dec")
    return (1 / (1 + np.exp(-logits))).reshape(len(z), *IMAGE)


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def npy_body(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("versions")
    publish(models, 1)
    publish(models, 2)
    return models


@pytest.fixture(scope="module")
def client(two_versions: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(two_versions))) as c:
        yield c


def answered(resp: Any, version: int) -> Any:
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-model-version"] == str(version)
    return resp


# --- /v1 ----------------------------------------------------------------------------------------------------


def test_encode_unpinned_gets_the_newest_and_pinned_gets_exactly_that_version(client, two_versions):
    b64, pixels = images()
    newest = answered(client.post("/v1/encode", json={"images": b64}), 2).json()
    assert (newest["model"], newest["version"]) == (NAME, 2)
    np.testing.assert_allclose(newest["mean"], expected_mean(two_versions / NAME / "2", pixels), rtol=1e-5)
    for pin in ({"version": 1}, {"model": f"{NAME}@1"}, {"model": NAME, "version": 1}):
        body = answered(client.post("/v1/encode", json={"images": b64, **pin}), 1).json()
        assert body["version"] == 1
        np.testing.assert_allclose(body["mean"], expected_mean(two_versions / NAME / "1", pixels), rtol=1e-5)
    # v2's weights are v1's doubled: the two versions' vectors differ by exactly that factor.
    np.testing.assert_allclose(newest["mean"], 2 * np.asarray(body["mean"]), rtol=1e-5)
    # Multipart: the pin is a form field, as every other option.
    files = [("files", (f"{i}.png", base64.b64decode(s), "image/png")) for i, s in enumerate(b64)]
    form = answered(client.post("/v1/encode", files=files, data={"version": "1"}), 1).json()
    assert form["mean"] == body["mean"]
    npy = answered(client.post("/v1/encode", json={"images": b64, "version": 1}, headers={"accept": NPY}), 1)
    np.testing.assert_array_equal(load_npy(npy.content), np.asarray(body["mean"], dtype=np.float32))


def test_decode_pins_by_query_or_body_and_every_media_type_names_the_version(client, two_versions):
    for version in (1, 2):
        want = expected_images(two_versions / NAME / str(version), Z)
        by_query = client.post(
            "/v1/decode", params={"version": version}, content=npy_body(Z),
            headers={"content-type": NPY, "accept": NPY},
        )  # fmt: skip
        np.testing.assert_allclose(load_npy(answered(by_query, version).content), want, rtol=1e-5, atol=1e-6)
        by_body = client.post("/v1/decode", json={"latents": Z.tolist(), "version": version})
        assert answered(by_body, version).json()["version"] == version
        png = client.post("/v1/decode", json={"latents": Z.tolist(), "model": f"{NAME}@{version}"},
                          headers={"accept": "image/png"})  # fmt: skip
        assert answered(png, version).headers["content-type"] == "image/png"
    assert answered(client.post("/v1/decode", json={"latents": Z.tolist()}), 2).json()["version"] == 2


def test_sample_reconstruct_interpolate_and_manifold_take_a_version(client):
    sample = {"n": 3, "seed": 5}
    one = answered(client.post("/v1/sample", json={**sample, "version": 1}), 1).json()
    two = answered(client.post("/v1/sample", json=sample), 2).json()
    assert one["latents"] == two["latents"] and one["images"] != two["images"]  # same draws, other decoder
    b64, _ = images()
    rec = client.post("/v1/reconstruct", json={"images": b64, "model": f"{NAME}@1"})
    assert answered(rec, 1).json()["version"] == 1
    path = client.post("/v1/interpolate", json={"latents": Z.tolist(), "steps": 3, "version": 1})
    assert answered(path, 1).json()["version"] == 1
    grid = client.get("/v1/manifold", params={"model": NAME, "version": 1, "size": 2})
    assert answered(grid, 1).json()["version"] == 1
    answered(client.get("/v1/manifold", params={"model": f"{NAME}@1", "size": 2}), 1)
    answered(client.get("/v1/manifold", params={"size": 2}), 2)


def test_a_version_that_is_not_loaded_is_404_naming_the_loaded_ones(client):
    b64, _ = images(1)
    for resp in (
        client.post("/v1/encode", json={"images": b64, "version": 3}),
        client.post("/v1/encode", json={"images": b64, "model": f"{NAME}@3"}),
        client.post("/v1/sample", json={"version": 7}),
        client.post("/v1/decode", params={"version": 3}, json={"latents": Z.tolist()}),
        client.get("/v1/manifold", params={"version": 3}),
    ):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error_type"] == "model_not_found"
        assert "loaded: [1, 2]" in resp.json()["error"]
        assert "x-model-version" not in resp.headers


def test_malformed_or_contradictory_pins_are_client_errors(client):
    b64, _ = images(1)
    conflict = client.post("/v1/encode", json={"images": b64, "model": f"{NAME}@1", "version": 2})
    assert conflict.status_code == 422 and "version given twice" in conflict.json()["error"]
    twice = client.post("/v1/decode", params={"version": 1}, json={"latents": Z.tolist(), "version": 2})
    assert twice.status_code == 422 and "version given twice" in twice.json()["error"]
    for bad in ({"version": 0}, {"version": "one"}, {"version": 10**10}, {"model": f"{NAME}@0"},
                {"model": f"{NAME}@"}, {"model": "@1"}):  # fmt: skip
        resp = client.post("/v1/sample", json=bad)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error_type"] == "invalid_input", resp.json()
    assert client.get("/v1/manifold", params={"version": "x"}).status_code == 422


def test_models_list_every_loaded_version_with_its_manifest_summary(client, two_versions):
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    one = client.get(f"/v1/models/{NAME}").json()
    assert listed[NAME] == one
    assert one["version"] == 2 and [v["version"] for v in one["versions"]] == [1, 2]
    assert [v["newest"] for v in one["versions"]] == [False, True]
    for entry in one["versions"]:
        folder = two_versions / NAME / str(entry["version"])
        assert entry["sha256"] == {"encoder": sha256_file(folder / "encoder.onnx"),
                                   "decoder": sha256_file(folder / "decoder.onnx")}  # fmt: skip
        assert entry["latent_dim"] == 2 and entry["providers"] == ["CPUExecutionProvider"]
        assert entry["dataset"] == "none" and "metrics" in entry
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["versions"] == {NAME: 2}  # readiness keeps its meaning


# --- /v2 ----------------------------------------------------------------------------------------------------


def infer_body(pixels: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(pixels.shape),
                        "data": pixels.ravel().tolist()}]}  # fmt: skip


def test_v2_versions_are_answered_by_that_exact_version(client, two_versions):
    _, pixels = images()
    for version in (1, 2):
        resp = client.post(f"/v2/models/{NAME}-encoder/versions/{version}/infer", json=infer_body(pixels))
        body = answered(resp, version).json()
        assert body["model_version"] == str(version)
        mean = np.asarray(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
        want = expected_mean(two_versions / NAME / str(version), pixels)
        np.testing.assert_allclose(mean, want, rtol=1e-5)
        meta = client.get(f"/v2/models/{NAME}-decoder/versions/{version}").json()
        assert meta["versions"] == ["1", "2"]
        ready = client.get(f"/v2/models/{NAME}-decoder/versions/{version}/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
    unpinned = answered(client.post(f"/v2/models/{NAME}-encoder/infer", json=infer_body(pixels)), 2)
    assert unpinned.json()["model_version"] == "2"
    assert client.get(f"/v2/models/{NAME}-encoder").json()["versions"] == ["1", "2"]


@pytest.mark.parametrize("version", ["3", "0", "01x", "abc", "1.0", "-1", "99999999999999999999"])
def test_v2_unloaded_or_non_integer_versions_are_404_in_the_error_shape(client, version):
    _, pixels = images(1)
    for resp in (
        client.get(f"/v2/models/{NAME}-encoder/versions/{version}"),
        client.get(f"/v2/models/{NAME}-encoder/versions/{version}/ready"),
        client.post(f"/v2/models/{NAME}-encoder/versions/{version}/infer", json=infer_body(pixels)),
    ):
        assert resp.status_code == 404, resp.text
        body = resp.json()
        assert body["error_type"] == "model_not_found" and "loaded: [1, 2]" in body["error"]


# --- across a live reload -----------------------------------------------------------------------------------


def test_a_client_pinned_to_v1_gets_v1s_exact_vectors_across_a_reload_to_v2(tmp_path):
    models = tmp_path / "models"
    publish(models, 1)
    b64, pixels = images()

    async def scenario(client: httpx.AsyncClient, registry: Any) -> dict[str, Any]:
        async def encode(**pin: Any) -> httpx.Response:
            return await client.post("/v1/encode", json={"images": b64, **pin})

        async def decode(**pin: Any) -> httpx.Response:
            return await client.post("/v1/decode", params=pin, content=npy_body(Z),
                                     headers={"content-type": NPY, "accept": NPY})  # fmt: skip

        out: dict[str, Any] = {"before": (await encode(version=1), await decode(version=1))}
        out["unpinned_before"] = await encode()
        out["v2_before"] = await encode(version=2)
        publish(models, 2)  # while serving
        out["swapped"] = await registry.reload()
        out["after"] = (await encode(version=1), await decode(version=1))
        out["unpinned_after"] = (await encode(), await decode())
        out["models"] = (await client.get(f"/v1/models/{NAME}")).json()
        return out

    async def main() -> dict[str, Any]:
        app = create_app(settings(models))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
                return await scenario(client, app.state.registry)

    out = asyncio.run(main())
    enc_before, dec_before = out["before"]
    enc_after, dec_after = out["after"]
    assert answered(enc_before, 1).json()["mean"] == answered(enc_after, 1).json()["mean"]  # exact
    assert answered(dec_before, 1).content == answered(dec_after, 1).content  # byte for byte
    v1_mean = expected_mean(models / NAME / "1", pixels)
    np.testing.assert_allclose(enc_after.json()["mean"], v1_mean, rtol=1e-5)
    assert answered(out["unpinned_before"], 1).json()["version"] == 1
    v2_before = out["v2_before"]
    assert v2_before.status_code == 404 and "loaded: [1]" in v2_before.json()["error"]
    assert out["swapped"] == [f"{NAME} v2"]
    enc_new, dec_new = out["unpinned_after"]
    np.testing.assert_allclose(answered(enc_new, 2).json()["mean"], 2 * np.asarray(enc_after.json()["mean"]),
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(load_npy(answered(dec_new, 2).content),
                               expected_images(models / NAME / "2", Z), rtol=1e-5, atol=1e-6)  # fmt: skip
    assert [v["version"] for v in out["models"]["versions"]] == [1, 2] and out["models"]["version"] == 2


def test_batch_metrics_are_labelled_by_version(client):
    for version in (1, 2):
        answered(client.post("/v1/decode", json={"latents": Z.tolist(), "version": version}), version)
    text = client.get("/metrics").text
    for version in (1, 2):
        assert f'vae_batch_size_count{{graph="decoder",model="{NAME}",version="{version}"}}' in text
        assert f'vae_queue_items{{graph="decoder",model="{NAME}",version="{version}"}}' in text
