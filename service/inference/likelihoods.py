"""The discretized logistic mixture of 8-bit pixels in numpy, term for term as `training/likelihoods.py`
computes it (Salimans et al. 2017, PixelCNN++), for the reconstruct score of models that declare it.

The decoder's `params` output holds, per pixel, K mixture logits, K*C mean logits and K*C log-scales
(component-major). Each value x = k/255 owns the bin x +- 1/510 of its component's logistic, the edge bins
reaching to -inf and +inf; a pixel's channels share the component.

A manifest with `channel_coupling` (PixelCNN++'s linear coupling of the channels) appends K * C(C-1)/2 maps
of coefficients tanh(maps), pairs (1,0), (2,0), (2,1): channel c's location is then
mu_c + sum_{j<c} coef_cj (x_j - 1/2), conditioned on the pixel's own earlier channels.
"""

from __future__ import annotations

import numpy as np

BINS = 256
HALF_BIN = 0.5 / (BINS - 1)
MIN_LOG_SCALE = -8.0
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
