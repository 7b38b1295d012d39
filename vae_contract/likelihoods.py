"""The numpy scores of the contract: -log p(x | z) under each likelihood a manifest can declare, and the KL
to N(0, I), term for term as training computes them in torch (`training/likelihoods.py`, `training/losses.py`,
`training/gaussians.py`), so the service's scores and the model card's numbers agree.

The discretized logistic mixture of 8-bit pixels (Salimans et al. 2017, PixelCNN++):

The decoder's `params` output holds, per pixel, K mixture logits, K*C mean logits and K*C log-scales
(component-major). Each value x = k/255 owns the bin x +- 1/510 of its component's logistic, the edge bins
reaching to -inf and +inf; a pixel's channels share the component.

A manifest with `channel_coupling` (PixelCNN++'s linear coupling of the channels) appends K * C(C-1)/2 maps
of coefficients tanh(maps), pairs (1,0), (2,0), (2,1): channel c's location is then
mu_c + sum_{j<c} coef_cj (x_j - 1/2), conditioned on the pixel's own earlier channels.
"""

from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2 * math.pi)
# Decoder outputs are sigmoid probabilities in float32, which round to exactly 0 or 1 for large logits; the
# clip keeps BCE finite (and caps one pixel's cost at -log(1e-7) ~ 16 nats).
BCE_EPS = 1e-7

BINS = 256
HALF_BIN = 0.5 / (BINS - 1)  # 1/510: half the spacing of the values k/255
# PixelCNN++ clamps log-scales at -7 on [-1, 1] pixels, i.e. -7.7 on [0, 1]; the floor keeps the density
# finite where the decoder is certain, and at s = exp(-8) an edge pixel at mean 1 still costs under 0.01 bit.
MIN_LOG_SCALE = -8.0
# Below this bin probability the sigmoid difference loses float32 precision; the density at the bin centre
# times the bin width replaces it there (as in PixelCNN++).
MIN_BIN_PROB = 1e-5


def _log_sigmoid(t: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -t)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return np.exp(_log_sigmoid(t))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def discretized_logistic_nll(x: np.ndarray, params: np.ndarray, coupled: bool = False) -> np.ndarray:
    """(N,) -log p(x | z) in nats for images x (N, C, H, W) and decoder params (N, maps, H, W): K(1+2C) maps,
    K(1 + 2C + C(C-1)/2) when coupled."""
    n, c, h, w = x.shape
    p = params.astype(np.float64)
    pairs = c * (c - 1) // 2 if coupled else 0
    k = p.shape[1] // (1 + 2 * c + pairs)
    if p.shape[1] != k * (1 + 2 * c + pairs) or p.shape[2:] != (h, w):
        raise ValueError(f"decoder params {p.shape} do not fit images {x.shape}")
    logits = p[:, :k]
    log_pi = logits - _logsumexp(logits, axis=1)[:, None]  # (N, K, H, W)
    means = _sigmoid(p[:, k : k + k * c]).reshape(n, k, c, h, w)
    log_s = np.maximum(p[:, k + k * c : k + 2 * k * c].reshape(n, k, c, h, w), MIN_LOG_SCALE)
    xs = x.astype(np.float64)[:, None]  # (N, 1, C, H, W)
    if coupled:
        coefficients = np.tanh(p[:, k + 2 * k * c :]).reshape(n, k, pairs, h, w)
        pair = 0
        for target in range(c):  # in place is right: each shift reads x, never a shifted location
            for j in range(target):
                means[:, :, target] += coefficients[:, :, pair] * (xs[:, :, j] - 0.5)
                pair += 1
    centered = xs - means
    inv_s = np.exp(-log_s)
    plus, minus, mid = inv_s * (centered + HALF_BIN), inv_s * (centered - HALF_BIN), inv_s * centered
    delta = _sigmoid(plus) - _sigmoid(minus)
    log_pdf_mid = mid - log_s - 2.0 * np.logaddexp(0.0, mid)
    with np.errstate(divide="ignore"):
        interior = np.where(
            delta > MIN_BIN_PROB, np.log(np.maximum(delta, 1e-12)), log_pdf_mid - np.log(BINS - 1)
        )
    log_p = np.where(
        xs < HALF_BIN, _log_sigmoid(plus), np.where(xs > 1 - HALF_BIN, _log_sigmoid(-minus), interior)
    )
    per_pixel = _logsumexp(log_pi + log_p.sum(axis=2), axis=1)  # (N, H, W)
    return -per_pixel.reshape(n, -1).sum(axis=1)


def kl_to_prior(mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """(N,) KL(N(mean, exp(log_var)) || N(0, I)) in closed form (Kingma and Welling 2014, appendix B)."""
    m, lv = mean.astype(np.float64), log_var.astype(np.float64)
    return -0.5 * np.sum(1 + lv - m**2 - np.exp(lv), axis=1)


def reconstruction_nll(
    x: np.ndarray, x_hat: np.ndarray, likelihood: str, gaussian_sigma: float | None
) -> np.ndarray:
    """(N,) -log p(x | z) summed over pixels, the same terms as training's `reconstruction_nll`.

    bernoulli: sum BCE(x, x_hat); gaussian: sum (x - x_hat)^2 / (2 sigma^2) + P (log sigma + log(2 pi) / 2).
    """
    xs, p = x.astype(np.float64).reshape(len(x), -1), x_hat.astype(np.float64).reshape(len(x), -1)
    if likelihood == "bernoulli":
        p = np.clip(p, BCE_EPS, 1 - BCE_EPS)
        return -np.sum(xs * np.log(p) + (1 - xs) * np.log1p(-p), axis=1)
    sigma = gaussian_sigma if gaussian_sigma is not None else 0.1
    pixels = xs.shape[1]
    return np.sum((xs - p) ** 2, axis=1) / (2 * sigma**2) + pixels * (math.log(sigma) + 0.5 * LOG_2PI)
