"""Lossless codec sizes and the closed-form probabilistic PCA code length, on fixed images and matrices."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.baselines import (
    PNG_OPTIONS,
    PPCA,
    WEBP_OPTIONS,
    codec_bits_per_dim,
    encoded_size,
    fit_ppca,
)

pytestmark = pytest.mark.timeout(60)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "emoji"


def fixture_rgb(name: str) -> np.ndarray:
    from training.datasets.emoji import composite_rgb

    return composite_rgb((FIXTURES / name).read_bytes())


@pytest.mark.parametrize("codec", ["webp", "png"])
def test_codec_bits_per_dim_is_the_file_size_and_lossless(codec):
    image = fixture_rgb("google-1f600.png")  # (3, 64, 64) real emoji on white
    options = WEBP_OPTIONS if codec == "webp" else PNG_OPTIONS
    buf = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buf, **options)
    assert encoded_size(image, options) == buf.tell()
    assert codec_bits_per_dim(image[None], codec) == pytest.approx(8 * buf.tell() / (3 * 64 * 64))
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(decoded, image)  # lossless: the bits/dim are a real code length


def test_codecs_on_a_constant_and_a_noise_image():
    flat = np.full((2, 1, 28, 28), 17, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    for codec in ("webp", "png"):
        assert codec_bits_per_dim(flat, codec) < 1.0
        assert codec_bits_per_dim(noise, codec) > 7.5  # nothing beats 8 bits/dim on uniform noise by much


def test_ppca_matches_a_dense_gaussian_computed_by_hand():
    rng = np.random.default_rng(3)
    x = rng.random((200, 5)) @ rng.random((5, 5))  # correlated, full rank
    x = (x - x.min()) / (x.max() - x.min())
    model = fit_ppca(x, 2)
    cov = np.cov(x, rowvar=False, bias=True)
    eigvals = np.sort(np.linalg.eigvalsh(cov))[::-1]
    assert model.sigma2 == pytest.approx(eigvals[2:].mean())
    dense = model.axes.T @ np.diag(model.variances) @ model.axes + model.sigma2 * (
        np.eye(5) - model.axes.T @ model.axes
    )
    test = np.round(x[:3] * 255) / 255
    d = test - model.mean
    prec = np.linalg.inv(dense)
    quad = np.einsum("ni,ij,nj->n", d, prec, d)
    logdet = np.linalg.slogdet(dense)[1]
    by_hand = 5 * math.log(255) + 0.5 * (
        5 * math.log(2 * math.pi) + logdet + quad + np.trace(prec) / (12 * 255**2)
    )
    assert np.allclose(model.code_length_nats(test), by_hand, rtol=1e-10)
    assert model.bits_per_dim(test) == pytest.approx(by_hand.mean() / (5 * math.log(2)))


def test_uniform_offset_term_by_quadrature():
    # E_u[(d + u)^T P (d + u)] over u uniform on a 1/255 bin per axis, by the midpoint rule on a 400^2 grid.
    model = PPCA(mean=np.zeros(2), axes=np.array([[0.6, 0.8]]), variances=np.array([0.05]), sigma2=0.001)
    point = np.array([[0.1, -0.05]])
    grid = (np.arange(400) + 0.5) / 400 - 0.5  # centred cell midpoints in [-1/2, 1/2]
    u = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2) / 255
    numeric = model.quadratic(point + u).mean()
    closed = model.quadratic(point)[0] + model.trace_inverse() / (12 * 255**2)
    assert numeric == pytest.approx(closed, rel=1e-6)


def test_fit_ppca_refuses_a_bad_latent_size():
    with pytest.raises(ValueError, match="latent size"):
        fit_ppca(np.zeros((4, 3)), 3)
