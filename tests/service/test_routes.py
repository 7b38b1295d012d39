"""Every route through the full ASGI stack, against ONNX models fitted to real MNIST (mnist_models.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

NPY = "application/x-npy"


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG"
        return img.size


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- health and models -------------------------------------------------------------------------------------


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True, "draining": False, "models": {"tiny": True, "tiny-2d": True},
        "versions": {"tiny": 1, "tiny-2d": 1}, "failures": {}, "reload_failures": {}, "default_model": "tiny",
    }  # fmt: skip


def test_models_list_manifests_providers_and_default(client):
    body = client.get("/v1/models").json()
    assert body["default_model"] == "tiny"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny", "tiny-2d"}
    tiny = by_name["tiny"]
    assert tiny["default"] is True and tiny["ready"] is True and tiny["error"] is None
    assert tiny["providers"] == ["CPUExecutionProvider"]
    assert tiny["latent_dim"] == 8 and tiny["version"] == 1
    assert tiny["manifest"]["likelihood"] == "bernoulli"
    assert len(tiny["manifest"]["encoder"]["sha256"]) == 64
    one = client.get("/v1/models/tiny-2d").json()
    assert one["latent_dim"] == 2 and one["default"] is False
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error_type"] == "model_not_found"


# --- sample ------------------------------------------------------------------------------------------------


def test_sample_shapes_ranges_and_png(client):
    r = client.post("/v1/sample", json={"n": 5, "seed": 11, "temperature": 0.8})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "tiny" and body["seed"] == 11 and body["temperature"] == 0.8
    assert np.asarray(body["latents"]).shape == (5, 8)
    assert len(body["images"]) == 5
    for image in body["images"]:
        assert png_size(base64.b64decode(image)) == (28, 28)
    assert r.headers["x-seed"] == "11"
    pixels = load_npy(client.post("/v1/sample", json={"n": 5, "seed": 11}, headers={"accept": NPY}).content)
    assert pixels.shape == (5, 1, 28, 28) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and pixels.std() > 0.05


def test_sample_is_deterministic_per_seed(client):
    def images(seed: int) -> list[str]:
        return client.post("/v1/sample", json={"n": 4, "seed": seed}).json()["images"]

    assert images(1) == images(1)
    assert images(1) != images(2)
    latents = client.post("/v1/sample", json={"n": 3, "seed": 5}).json()["latents"]
    expected = np.random.default_rng(5).standard_normal((3, 8), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(latents, dtype=np.float32), expected)


def test_sample_without_seed_returns_the_seed_it_used(client):
    body = client.post("/v1/sample", json={"n": 2}).json()
    again = client.post("/v1/sample", json={"n": 2, "seed": body["seed"]}).json()
    assert again["images"] == body["images"]
    assert client.post("/v1/sample").status_code == 200  # an empty body means all defaults


def test_sample_temperature_scales_the_latents(client):
    hot = client.post("/v1/sample", json={"n": 3, "seed": 4, "temperature": 2.0}).json()["latents"]
    cold = client.post("/v1/sample", json={"n": 3, "seed": 4, "temperature": 1.0}).json()["latents"]
    np.testing.assert_allclose(np.asarray(hot), 2 * np.asarray(cold), rtol=1e-6)


def test_png_accept_gives_one_grid(client):
    r = client.post("/v1/sample", json={"n": 4, "seed": 3}, headers={"accept": "image/png"})
    assert r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "3"
    assert png_size(r.content) == (2 * 30 + 2, 2 * 30 + 2)  # 2x2 tiles of 28 px with 2 px padding
    single = client.post("/v1/sample", json={"n": 1, "seed": 3}, headers={"accept": "image/png"})
    assert png_size(single.content) == (28, 28)


def test_npy_output_selects_latents(client):
    r = client.post("/v1/sample?output=latents", json={"n": 3, "seed": 9}, headers={"accept": NPY})
    assert r.headers["content-type"] == NPY
    json_latents = client.post("/v1/sample", json={"n": 3, "seed": 9}).json()["latents"]
    np.testing.assert_array_equal(load_npy(r.content), np.asarray(json_latents, dtype=np.float32))


# --- encode ------------------------------------------------------------------------------------------------


def test_encode_json_and_multipart_agree(client, digit_pngs):
    pngs = digit_pngs[:3]
    as_json = client.post("/v1/encode", json={"images": [b64(p) for p in pngs]}).json()
    files = [("files", (f"d{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    as_form = client.post("/v1/encode", files=files).json()
    data_urls = [f"data:image/png;base64,{b64(p)}" for p in pngs]
    as_urls = client.post("/v1/encode", json={"images": data_urls}).json()
    assert as_json["mean"] == as_form["mean"] == as_urls["mean"]
    assert as_json["log_var"] == as_form["log_var"]
    assert np.asarray(as_json["mean"]).shape == (3, 8) and as_json["latent_dim"] == 8
    assert "z" not in as_json


def test_encode_npy_round_trips_exactly(client, digit_pngs):
    payload = {"images": [b64(p) for p in digit_pngs[:4]], "sample": True, "seed": 1}
    body = client.post("/v1/encode", json=payload).json()
    for output in ("mean", "log_var", "z"):
        r = client.post(f"/v1/encode?output={output}", json=payload, headers={"accept": NPY})
        arr = load_npy(r.content)
        assert arr.dtype == np.float32 and arr.shape == (4, 8)
        np.testing.assert_array_equal(arr, np.asarray(body[output], dtype=np.float32))
    default = load_npy(client.post("/v1/encode", json=payload, headers={"accept": NPY}).content)
    np.testing.assert_array_equal(default, np.asarray(body["mean"], dtype=np.float32))


def test_encode_sample_z_is_seeded_reparameterization(client, digit_pngs):
    payload = {"images": [b64(digit_pngs[0])], "sample": True, "seed": 21}
    a, b = client.post("/v1/encode", json=payload).json(), client.post("/v1/encode", json=payload).json()
    assert a["z"] == b["z"] and a["seed"] == 21
    mean, log_var = np.asarray(a["mean"], np.float32), np.asarray(a["log_var"], np.float32)
    eps = np.random.default_rng(21).standard_normal(mean.shape, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(a["z"]), mean + np.exp(0.5 * log_var) * eps, rtol=1e-5, atol=1e-6)
    other = client.post("/v1/encode", json={**payload, "seed": 22}).json()
    assert other["z"] != a["z"]
    z_asked = client.post("/v1/encode?output=z", json={"images": payload["images"]}, headers={"accept": NPY})
    assert z_asked.status_code == 422  # z only exists when sample is true


def test_encode_accepts_any_mode_and_size(client, mnist_digits):
    digit = (mnist_digits[0][0, 0] * 255).astype(np.uint8)
    reference = client.post("/v1/encode", json={"images": [b64(png(Image.fromarray(digit)))]}).json()["mean"]
    variants = {
        "rgb": Image.fromarray(digit).convert("RGB"),
        "rgba": Image.fromarray(digit).convert("RGBA"),
        "palette": Image.fromarray(digit).convert("P"),
        "big": Image.fromarray(digit).resize((112, 112), Image.Resampling.NEAREST),
    }
    for name, img in variants.items():
        mean = client.post("/v1/encode", json={"images": [b64(png(img))]}).json()["mean"]
        assert np.abs(np.asarray(mean) - np.asarray(reference)).max() < 0.5, name
    jpeg = io.BytesIO()
    Image.fromarray(digit).save(jpeg, format="JPEG", quality=95)
    assert client.post("/v1/encode", files=[("files", ("d.jpg", jpeg.getvalue()))]).status_code == 200


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --- decode ------------------------------------------------------------------------------------------------


def test_decode_json_png_and_npy_agree(client):
    latents = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    body = client.post("/v1/decode", json={"latents": latents.tolist()}).json()
    assert len(body["images"]) == 3 and body["model"] == "tiny"
    as_npy = load_npy(
        client.post(
            "/v1/decode", content=npy_bytes(latents), headers={"content-type": NPY, "accept": NPY}
        ).content
    )
    assert as_npy.shape == (3, 1, 28, 28) and as_npy.min() >= 0 and as_npy.max() <= 1
    json_in_npy_out = load_npy(
        client.post("/v1/decode", json={"latents": latents.tolist()}, headers={"accept": NPY}).content
    )
    np.testing.assert_array_equal(as_npy, json_in_npy_out)
    # The base64 PNGs are the same pixels, quantized to 8 bits.
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))), dtype=np.float32) / 255
    assert np.abs(first - as_npy[0, 0]).max() <= 1 / 255 + 1e-6
    grid = client.post("/v1/decode", json={"latents": latents.tolist()}, headers={"accept": "image/png"})
    assert png_size(grid.content) == (2 * 30 + 2, 2 * 30 + 2)


def test_decode_npy_body_names_its_model_in_the_query(client):
    z = np.zeros((2, 2), dtype=np.float32)
    r = client.post("/v1/decode?model=tiny-2d", content=npy_bytes(z), headers={"content-type": NPY})
    assert r.status_code == 200 and r.json()["model"] == "tiny-2d"
    wrong = client.post("/v1/decode", content=npy_bytes(z), headers={"content-type": NPY})
    assert wrong.status_code == 422 and "latent_dim is 8" in wrong.json()["error"]


def test_decode_matches_sample_with_the_same_latents(client):
    sample = client.post("/v1/sample", json={"n": 2, "seed": 8}).json()
    decoded = client.post("/v1/decode", json={"latents": sample["latents"]}).json()
    assert decoded["images"] == sample["images"]


# --- reconstruct -------------------------------------------------------------------------------------------


def test_reconstruct_is_closer_to_its_own_digit_than_to_other_digits(client, digit_pngs, mnist_digits):
    images, labels = mnist_digits
    count = len(digit_pngs)
    files = [("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(digit_pngs)]
    r = client.post("/v1/reconstruct?output=images", files=files, headers={"accept": NPY})
    recon = load_npy(r.content).reshape(count, -1)
    originals = images.reshape(count, -1)
    distances = ((recon[:, None, :] - originals[None, :, :]) ** 2).mean(axis=2)  # (recon i, original j)
    own = np.diag(distances)
    other = np.array([distances[i, labels != labels[i]].mean() for i in range(count)])
    # The fixture model is linear (PCA-like, 8 latents), so its reconstructions are blurry: demand that
    # nearly every reconstruction is closer to its own digit than to the typical digit of another class,
    # and clearly so on average.
    assert (own < other).mean() >= 0.9
    assert own.mean() < 0.8 * other.mean()


def test_reconstruct_scores_are_negative_elbo_and_flag_noise(client, digit_pngs, mnist_digits):
    body = client.post("/v1/reconstruct", json={"images": [b64(p) for p in digit_pngs[:8]]}).json()
    assert len(body["images"]) == 8 and np.asarray(body["mean"]).shape == (8, 8)
    scores, mse = np.asarray(body["scores"]), np.asarray(body["mse"])
    assert scores.shape == (8,) and (scores > 0).all() and (mse > 0).all() and (mse < 0.1).all()
    # Recompute the documented score from the returned pieces: BCE at the decoded mean + closed-form KL.
    x = mnist_digits[0][:8].reshape(8, -1).astype(np.float64)
    z = np.asarray(body["mean"], np.float32)
    x_hat = load_npy(
        client.post("/v1/decode", json={"latents": z.tolist()}, headers={"accept": NPY}).content
    ).reshape(8, -1)
    p = np.clip(x_hat.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
    mean, log_var = np.asarray(body["mean"]), np.asarray(body["log_var"])
    kl = -0.5 * (1 + log_var - mean**2 - np.exp(log_var)).sum(axis=1)
    np.testing.assert_allclose(scores, bce + kl, rtol=1e-4)
    np.testing.assert_allclose(mse, ((x - x_hat) ** 2).mean(axis=1), rtol=1e-4)
    # A typical digit scores near the model's test ELBO; uniform noise scores far higher.
    noise = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    noisy = client.post("/v1/reconstruct", json={"images": [b64(png(Image.fromarray(noise)))]}).json()
    assert noisy["scores"][0] > 2 * scores.max()


# --- interpolate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolate_images_endpoints_are_the_encoder_means(client, digit_pngs, method):
    pair = [b64(digit_pngs[0]), b64(digit_pngs[1])]
    means = np.asarray(client.post("/v1/encode", json={"images": pair}).json()["mean"], dtype=np.float32)
    body = client.post("/v1/interpolate", json={"images": pair, "steps": 6, "method": method}).json()
    latents = np.asarray(body["latents"], dtype=np.float32)
    assert latents.shape == (6, 8) and len(body["images"]) == 6 and body["method"] == method
    np.testing.assert_array_equal(latents[0], means[0])
    np.testing.assert_array_equal(latents[-1], means[1])
    form = client.post(
        "/v1/interpolate",
        files=[("files", ("a.png", digit_pngs[0])), ("files", ("b.png", digit_pngs[1]))],
        data={"steps": "6", "method": method},
    ).json()
    assert form["latents"] == body["latents"]


def test_interpolate_latents_slerp_keeps_endpoints_and_norm(client):
    a, b = [0.3, -1.7], [1.9, 0.4]
    body = client.post(
        "/v1/interpolate", json={"latents": [a, b], "steps": 9, "method": "slerp", "model": "tiny-2d"}
    ).json()
    latents = np.asarray(body["latents"], dtype=np.float32)
    np.testing.assert_array_equal(latents[0], np.float32(a))
    np.testing.assert_array_equal(latents[-1], np.float32(b))
    lerp = np.asarray(
        client.post("/v1/interpolate", json={"latents": [a, b], "steps": 9, "model": "tiny-2d"}).json()[
            "latents"
        ]
    )
    assert np.linalg.norm(latents[4]) > np.linalg.norm(lerp[4])  # slerp does not cut through the origin
    row = client.post(
        "/v1/interpolate",
        json={"latents": [a, b], "steps": 5, "model": "tiny-2d"},
        headers={"accept": "image/png"},
    )
    assert png_size(row.content) == (5 * 30 + 2, 32)  # one row of 5 tiles


# --- manifold ----------------------------------------------------------------------------------------------


def test_manifold_json_and_png(client):
    body = client.get("/v1/manifold", params={"model": "tiny-2d", "size": 6}).json()
    assert body["size"] == 6 and np.asarray(body["latents"]).shape == (36, 2)
    assert png_size(base64.b64decode(body["image"])) == (6 * 30 + 2, 6 * 30 + 2)
    raw = client.get("/v1/manifold?model=tiny-2d&size=6", headers={"accept": "image/png"})
    assert raw.headers["content-type"] == "image/png" and raw.content == base64.b64decode(body["image"])
    latents = np.asarray(body["latents"])
    assert latents[0, 1] > latents[-1, 1] and latents[0, 0] < latents[-1, 0]  # rows run high to low z2


def test_manifold_needs_a_2d_model(client):
    r = client.get("/v1/manifold", params={"size": 4})  # default model is 8-D
    assert r.status_code == 422 and "latent_dim 8" in r.json()["error"]


# --- plumbing ----------------------------------------------------------------------------------------------


def test_request_ids_are_returned_and_honoured(client):
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    junk = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"]
    assert junk != "bad id\twith spaces"
    assert client.post("/v1/sample", json={"n": 0}).headers["x-request-id"]  # errors carry one too


def test_metrics_expose_requests_batches_and_model_state(client):
    client.post("/v1/sample", json={"n": 2, "seed": 1})
    text = client.get("/metrics").text
    assert 'vae_http_requests_total{method="POST",route="/v1/sample",status="200"}' in text
    assert 'vae_batch_size_count{graph="decoder",model="tiny",version="1"}' in text
    assert 'vae_model_loaded{model="tiny"} 1.0' in text
    assert "vae_queue_items" in text and "vae_inference_seconds_bucket" in text


def test_openapi_documents_bodies_and_errors(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/encode", "/v1/decode", "/v1/sample", "/v1/reconstruct", "/v1/interpolate"):
        op = spec["paths"][path]["post"]
        assert {"422", "404", "413", "503", "504"} <= set(op["responses"]), path
        assert "application/json" in op["requestBody"]["content"], path
    assert "multipart/form-data" in spec["paths"]["/v1/encode"]["post"]["requestBody"]["content"]
    assert "application/x-npy" in spec["paths"]["/v1/decode"]["post"]["requestBody"]["content"]
    assert "EncodeResponse" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200
