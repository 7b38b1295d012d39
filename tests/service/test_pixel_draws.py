"""Images drawn from p(x | z): the numpy draws follow the distributions they claim (a hand-built mixture's
histogram against its exact bin probabilities, PixelCNN++'s channel coupling, Bernoulli rates), temperature 0
gives the modes, a seed gives the same images again; over HTTP the Bernoulli fixture model keeps its mean as
the default, draws binary images when asked, says which it returned, and refuses bad values with 422."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from vae_contract.likelihoods import discretized_logistic_nll
from vae_contract.pixel_draws import (
    draw_bernoulli,
    draw_mixture,
    pixel_rng,
    sampler_noise,
)

pytestmark = pytest.mark.timeout(60)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# Two components on one gray pixel: weight 0.3 at 0.2 (scale 0.05), weight 0.7 at 0.97 (scale 0.03), so the
# top edge bin (value 255, the logistic's tail above 1) carries real mass.
MIXTURE = np.array([math.log(0.3), math.log(0.7), _logit(0.2), _logit(0.97), math.log(0.05), math.log(0.03)])


def _params(n: int) -> np.ndarray:
    return np.broadcast_to(MIXTURE[None, :, None, None], (n, 6, 1, 1)).astype(np.float32)


def _exact_bin_probabilities() -> np.ndarray:
    """p(k / 255) for k = 0..255 from the likelihood the reconstruct score uses."""
    x = (np.arange(256, dtype=np.float32) / 255).reshape(256, 1, 1, 1)
    return np.exp(-discretized_logistic_nll(x, _params(256).astype(np.float64)))


def test_exact_probabilities_sum_to_one():
    assert _exact_bin_probabilities().sum() == pytest.approx(1.0, abs=1e-6)


def test_draws_follow_the_mixture_bin_for_bin():
    n = 60_000
    noise = sampler_noise(n, 3, 1, 1, 1, pixel_rng(7), 1.0)
    drawn = draw_mixture(_params(n), 1, False, noise)
    k = np.round(drawn.ravel() * 255).astype(int)
    assert np.allclose(drawn.ravel() * 255, k, atol=1e-4)  # 8-bit values
    observed = np.bincount(k, minlength=256)
    expected = _exact_bin_probabilities() * n
    kept = expected >= 20  # Pearson's chi-square over the bins with enough expected draws
    chi2 = float(np.sum((observed[kept] - expected[kept]) ** 2 / expected[kept]))
    dof = int(kept.sum()) - 1
    assert dof > 20
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)  # far below: p < 1e-4 for a correct sampler
    # The edge bin holds the tail above 1: about half of the heavy component's mass past 1 - 1/510.
    assert observed[255] == pytest.approx(expected[255], rel=0.05)


def test_temperature_zero_takes_the_heaviest_component_at_its_location():
    noise = sampler_noise(500, 3, 1, 1, 1, pixel_rng(1), 0.0)
    drawn = draw_mixture(_params(500), 1, False, noise)
    assert np.all(drawn == np.float32(np.round(0.97 * 255) / 255))


def test_low_temperature_narrows_the_draws():
    spread = {}
    for t in (1.0, 0.3):
        drawn = draw_mixture(_params(20_000), 1, False, sampler_noise(20_000, 3, 1, 1, 1, pixel_rng(2), t))
        spread[t] = float(np.mean(drawn.ravel() < 0.5))  # the light component's share
    assert spread[1.0] == pytest.approx(0.3, abs=0.02)
    assert spread[0.3] < 0.1  # softmax(logits / 0.3): 0.3^(1/0.3) / (0.3^(1/0.3) + 0.7^(1/0.3)) = 0.054


def test_channel_coupling_shifts_green_by_the_drawn_red():
    # One component: red around 0.5 (scale 0.1), green at mu_G + 0.8 (x_R - 1/2) (scale 0.01).
    n, a = 20_000, 0.8
    pairs = [math.atanh(a), 0.0, 0.0]
    params = np.array([0.0, 0.0, _logit(0.5), 0.0, math.log(0.1), math.log(0.01), math.log(0.01), *pairs])
    params = np.broadcast_to(params[None, :, None, None], (n, 10, 1, 1)).astype(np.float32)
    drawn = draw_mixture(params, 3, True, sampler_noise(n, 4, 3, 1, 1, pixel_rng(3), 1.0))
    red, green = drawn[:, 0].ravel(), drawn[:, 1].ravel()
    inside = (red > 0.1) & (red < 0.9)  # away from the clamp at 0 and 1
    slope = np.polyfit(red[inside], green[inside], 1)[0]
    assert slope == pytest.approx(a, abs=0.02)


def test_bernoulli_draws_at_their_rates_and_threshold_at_zero():
    p = np.full((40_000, 1, 1, 1), 0.2, dtype=np.float32)
    assert draw_bernoulli(p, pixel_rng(0), 1.0).mean() == pytest.approx(0.2, abs=0.01)
    # Logit / 2 at T = 2: sigmoid(logit(0.2) / 2) = 1 / (1 + 2) = 1/3.
    assert draw_bernoulli(p, pixel_rng(0), 2.0).mean() == pytest.approx(1 / 3, abs=0.01)
    q = np.array([0.2, 0.49, 0.51, 0.9], dtype=np.float32).reshape(1, 1, 2, 2)
    assert draw_bernoulli(q, pixel_rng(0), 0.0).ravel().tolist() == [0, 0, 1, 1]


def test_a_seed_gives_the_same_noise_and_a_stream_apart_from_the_latents():
    one = sampler_noise(2, 13, 3, 4, 4, pixel_rng(5), 1.0)
    assert np.array_equal(one, sampler_noise(2, 13, 3, 4, 4, pixel_rng(5), 1.0))
    assert not np.array_equal(one, sampler_noise(2, 13, 3, 4, 4, pixel_rng(6), 1.0))
    latents = np.random.default_rng(5).gumbel(size=one[:, :10].shape)
    assert not np.allclose(one[:, :10], latents)
    shared = sampler_noise(3, 13, 3, 4, 4, pixel_rng(5), 0.5, shared=True)
    assert np.array_equal(shared[0], shared[2])


# --- over HTTP, on the Bernoulli fixture model ------------------------------------------------------------


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_bernoulli_model_keeps_the_mean_by_default(client):
    body = client.post("/v1/sample", json={"model": "tiny", "n": 2, "seed": 1}).json()
    assert body["pixels"] == "mean" and body.get("pixel_temperature") is None
    info = client.get("/v1/models/tiny").json()
    assert info["pixels"] == {"default": "mean", "choices": ["sample", "mean"]}


def test_bernoulli_draws_are_binary_reproducible_and_tagged(client):
    request = {"model": "tiny", "n": 3, "seed": 4, "pixels": "sample"}
    first = client.post("/v1/sample", json=request)
    again = client.post("/v1/sample", json=request).json()
    body = first.json()
    assert first.headers["x-pixels"] == "sample"
    assert body["pixels"] == "sample" and body["pixel_temperature"] == 0.5 and body["seed"] == 4
    assert body["images"] == again["images"]
    values = np.unique(np.concatenate([_pixels(i).ravel() for i in body["images"]]))
    assert set(values.tolist()) <= {0, 255}
    mean = client.post("/v1/sample", json={**request, "pixels": "mean"}).json()
    assert mean["latents"] == body["latents"]  # the pixel draws do not move the latent draws


def test_decode_and_interpolate_draw_with_a_returned_seed(client):
    z = [[0.0] * 8, [1.0] * 8]
    decoded = client.post("/v1/decode", json={"model": "tiny", "latents": z, "pixels": "sample"}).json()
    assert decoded["pixels"] == "sample" and isinstance(decoded["seed"], int)
    again = client.post(
        "/v1/decode", json={"model": "tiny", "latents": z, "pixels": "sample", "seed": decoded["seed"]}
    ).json()
    assert again["images"] == decoded["images"]
    path = client.post(
        "/v1/interpolate", json={"model": "tiny", "latents": z, "steps": 3, "pixels": "sample", "seed": 2}
    ).json()
    assert path["pixels"] == "sample" and path["seed"] == 2 and len(path["images"]) == 3
    zero = client.post(
        "/v1/decode", json={"model": "tiny", "latents": z, "pixels": "sample", "pixel_temperature": 0}
    ).json()
    mean = client.post("/v1/decode", json={"model": "tiny", "latents": z, "pixels": "mean"}).json()
    thresholded = [(_pixels(m) >= 128) * 255 for m in mean["images"]]  # p > 1/2, as the mean's PNG rounds
    assert all(np.array_equal(_pixels(a), b) for a, b in zip(zero["images"], thresholded, strict=True))


def test_reconstruct_says_which_images_it_returned(client, digit_pngs):
    files = [("files", ("d.png", digit_pngs[0], "image/png"))]
    drawn = client.post("/v1/reconstruct", files=files, data={"pixels": "sample", "seed": "3"})
    mean = client.post("/v1/reconstruct", files=files)
    assert drawn.status_code == 200, drawn.text
    assert drawn.json()["pixels"] == "sample" and mean.json()["pixels"] == "mean"
    assert drawn.json()["scores"] == mean.json()["scores"]  # the score does not depend on the images shown


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pixels": "blur"}, "pixels: Input should be 'sample' or 'mean'"),
        ({"pixel_temperature": -0.1}, "pixel_temperature: Input should be greater than or equal to 0"),
        ({"pixel_temperature": 2.5}, "pixel_temperature: Input should be less than or equal to 2"),
        ({"pixel_temperature": "warm"}, "pixel_temperature: Input should be a valid number"),
    ],
)
def test_bad_pixel_options_are_422(client, fields, message):
    for route, extra in (("/v1/sample", {}), ("/v1/decode", {"latents": [[0.0] * 8]})):
        response = client.post(route, json={"model": "tiny", **extra, **fields})
        assert response.status_code == 422, response.text
        assert response.json()["error"].startswith(message)


def test_an_npy_decode_takes_its_pixel_options_in_the_query(client):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 8), dtype=np.float32))
    headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
    params = {"model": "tiny", "pixels": "sample", "seed": 3, "pixel_temperature": 0.7}
    drawn = client.post("/v1/decode", content=buffer.getvalue(), params=params, headers=headers)
    again = client.post("/v1/decode", content=buffer.getvalue(), params=params, headers=headers)
    assert drawn.status_code == 200, drawn.text
    assert drawn.headers["x-pixels"] == "sample" and drawn.headers["x-seed"] == "3"
    images = np.load(io.BytesIO(drawn.content))
    assert set(np.unique(images).tolist()) <= {0.0, 1.0} and drawn.content == again.content
    mean = client.post("/v1/decode", content=buffer.getvalue(), params={"model": "tiny"}, headers=headers)
    assert mean.headers["x-pixels"] == "mean"
