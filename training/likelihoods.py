"""The discretized logistic likelihood for 8-bit images (Kingma et al. 2016, IAF-VAE; Salimans et al. 2017,
PixelCNN++), under which -log p(x|z) is a real code length: bits/dim = nats / (dims * ln 2).

Pixels are x = k / 255 for k in 0..255. Each value owns the bin [x - 1/510, x + 1/510] of a logistic with
location `mean` and scale exp(log_scale); the two edge bins extend to -inf and +inf, so the 256 probabilities
of a pixel sum to exactly 1:

    P(x) = sigmoid((x + 1/510 - mean) / s) - sigmoid((x - 1/510 - mean) / s)     (0 < k < 255)
    P(0) = sigmoid((1/510 - mean) / s),  P(1) = 1 - sigmoid((1 - 1/510 - mean) / s)

The decoder emits 2C channels: the first C are logits of the mean (sigmoid keeps it in [0, 1], so the mean is
a displayable image, the decoder graph's output `x`), the last C the per-pixel, per-channel log-scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BINS = 256
HALF_BIN = 0.5 / (BINS - 1)  # 1/510: half the spacing of the values k/255
# PixelCNN++ clamps log-scales at -7 on [-1, 1] pixels, i.e. -7.7 on [0, 1]; the floor keeps the density
# finite where the decoder is certain, and at s = exp(-8) an edge pixel at mean 1 still costs under 0.01 bit.
MIN_LOG_SCALE = -8.0
# Below this bin probability the sigmoid difference loses float32 precision; the density at the bin centre
# times the bin width replaces it there (as in PixelCNN++).
MIN_BIN_PROB = 1e-5


def split_params(params: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder output (B, 2C, H, W) -> mean in [0, 1] and clamped log-scale, each (B, C, H, W)."""
    logits, log_scale = params[:, :channels], params[:, channels:]
    return torch.sigmoid(logits), torch.clamp(log_scale, min=MIN_LOG_SCALE)


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) per pixel and channel, same shape as x; x holds values k / 255."""
    centered = x - mean
    inv_s = torch.exp(-log_scale)
    plus = inv_s * (centered + HALF_BIN)
    minus = inv_s * (centered - HALF_BIN)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus), for the bottom edge bin
    log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)), for the top edge bin
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * centered
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid)  # log logistic density at the bin centre
    interior = torch.where(
        delta > MIN_BIN_PROB,
        torch.log(torch.clamp(delta, min=1e-12)),
        log_pdf_mid - math.log(BINS - 1),
    )
    return torch.where(
        x < HALF_BIN, log_cdf_plus, torch.where(x > 1 - HALF_BIN, log_one_minus_cdf_minus, interior)
    )


def discretized_logistic_nll(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image in nats, from decoder output params (B, 2C, H, W) and images x (B, C, H, W)."""
    mean, log_scale = split_params(params, x.shape[1])
    return -discretized_logistic_log_prob(x, mean, log_scale).flatten(1).sum(dim=1)


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """A code length in nats per image -> bits per dimension (pixel and channel)."""
    return nats_per_image / (dims * math.log(2))
