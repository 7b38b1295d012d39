"""What a VAE's test NLL is compared with, on exactly the same test images, all in bits per dimension
(pixel and channel) of 8-bit data:

- lossless WebP and PNG: the size of each image's file at the codec's best settings, times 8, over its dims;
  a generic codec's header is part of what it costs to send one image.
- probabilistic PCA in closed form (Tipping and Bishop 1999): a Gaussian N(mean, W W^T + sigma^2 I) fitted by
  maximum likelihood on the training images, with the same discretization as the discretized logistic: each
  value k/255 owns a bin of width 1/255. Its code length, -log P(bin) <= D log 255 - E_u[log p(x + u)] for u
  uniform over the bin (Jensen), is computed exactly: the Gaussian's expected quadratic form over a uniform
  offset adds tr(C^-1) / (12 * 255^2).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

LEVELS = 255  # pixel values are k / 255
WEBP_OPTIONS = {"format": "WEBP", "lossless": True, "quality": 100, "method": 6}
PNG_OPTIONS = {"format": "PNG", "optimize": True, "compress_level": 9}


def _pil(image: np.ndarray) -> Image.Image:
    """uint8 (C, H, W) -> an L or RGB Pillow image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected uint8 (C, H, W) with C in (1, 3), got {image.dtype} {image.shape}")
    return Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


def encoded_size(image: np.ndarray, options: dict[str, object]) -> int:
    """Bytes of one uint8 (C, H, W) image saved with Pillow `options`."""
    buf = io.BytesIO()
    _pil(image).save(buf, **options)  # type: ignore[arg-type]
    return buf.tell()


def codec_bits_per_dim(images: np.ndarray, codec: str) -> float:
    """Mean over uint8 (N, C, H, W) images of 8 * file size / (C * H * W), for codec 'webp' or 'png'."""
    options = {"webp": WEBP_OPTIONS, "png": PNG_OPTIONS}[codec]
    dims = math.prod(images.shape[1:])
    total = sum(encoded_size(img, options) for img in images)
    return 8.0 * total / (len(images) * dims)


@dataclass
class PPCA:
    """N(mean, C) with C = W W^T + sigma2 I, stored in C's eigenbasis: the top-q axes and their variances."""

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (q, D) orthonormal rows
    variances: np.ndarray  # (q,) eigenvalues of C along `axes` (the sample covariance's top q)
    sigma2: float  # variance in every other direction: the mean of the discarded eigenvalues

    @property
    def dims(self) -> int:
        return int(self.mean.shape[0])

    def log_det(self) -> float:
        q = len(self.variances)
        return float(np.sum(np.log(self.variances)) + (self.dims - q) * math.log(self.sigma2))

    def trace_inverse(self) -> float:
        return float(np.sum(1.0 / self.variances) + (self.dims - len(self.variances)) / self.sigma2)

    def quadratic(self, x: np.ndarray) -> np.ndarray:
        """(N,) (x - mean)^T C^-1 (x - mean) for x (N, D)."""
        d = np.asarray(x, dtype=np.float64) - self.mean
        proj = d @ self.axes.T  # (N, q)
        rest = np.sum(d * d, axis=1) - np.sum(proj * proj, axis=1)
        return np.sum(proj * proj / self.variances, axis=1) + rest / self.sigma2

    def code_length_nats(self, x: np.ndarray) -> np.ndarray:
        """(N,) D log 255 + E_u[-log p(x + u)] per image, x (N, D) holding values k / 255."""
        dims = self.dims
        expected_quadratic = self.quadratic(x) + self.trace_inverse() / (12.0 * LEVELS**2)
        neg_log_density = 0.5 * (dims * math.log(2 * math.pi) + self.log_det() + expected_quadratic)
        return dims * math.log(LEVELS) + neg_log_density

    def bits_per_dim(self, x: np.ndarray) -> float:
        return float(np.mean(self.code_length_nats(x)) / (self.dims * math.log(2)))


def fit_ppca(x: np.ndarray, q: int) -> PPCA:
    """Maximum-likelihood PPCA (Tipping and Bishop 1999, eqs. 7-8) from x (N, D) in [0, 1]."""
    data = np.asarray(x, dtype=np.float64)
    n, dims = data.shape
    if not 0 < q < dims:
        raise ValueError(f"latent size q must be in 1..{dims - 1}, got {q}")
    mean = data.mean(axis=0)
    centered = data - mean
    cov = centered.T @ centered / n  # (D, D), the maximum-likelihood covariance
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    # A floor keeps the density proper when pixels never vary in training (e.g. a constant background).
    floor = 1e-12
    sigma2 = max(float(np.mean(eigvals[q:])), floor)
    variances = np.maximum(eigvals[:q], sigma2)
    return PPCA(mean=mean, axes=eigvecs[:, :q].T.copy(), variances=variances, sigma2=sigma2)


def baseline_bits_per_dim(x_train: np.ndarray, x_test: np.ndarray, latent_dim: int) -> dict[str, float]:
    """WebP, PNG and PPCA (q = latent_dim) bits/dim on the uint8 (N, C, H, W) test images."""
    flat_train = x_train.reshape(len(x_train), -1).astype(np.float64) / LEVELS
    flat_test = x_test.reshape(len(x_test), -1).astype(np.float64) / LEVELS
    ppca = fit_ppca(flat_train, latent_dim)
    return {
        "webp_lossless": round(codec_bits_per_dim(x_test, "webp"), 4),
        "png": round(codec_bits_per_dim(x_test, "png"), 4),
        "ppca": round(ppca.bits_per_dim(flat_test), 4),
    }
