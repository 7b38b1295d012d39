"""The discretized logistic mixture likelihood for 8-bit images (Salimans et al. 2017, PixelCNN++; with one
component, the discretized logistic of Kingma et al. 2016, IAF-VAE), under which -log p(x|z) is a real code
length: bits/dim = nats / (dims * ln 2).

Pixels are x = k / 255 for k in 0..255. Each value owns the bin [x - 1/510, x + 1/510] of a logistic with
location `mean` and scale exp(log_scale); the two edge bins extend to -inf and +inf, so the 256 probabilities
of a channel sum to exactly 1:

    P(x) = sigmoid((x + 1/510 - mean) / s) - sigmoid((x - 1/510 - mean) / s)     (0 < k < 255)
    P(0) = sigmoid((1/510 - mean) / s),  P(1) = 1 - sigmoid((1 - 1/510 - mean) / s)

A pixel's channels share one mixture component, as in PixelCNN++: p(x) = sum_k pi_k prod_c P(x_c | k). That
is what lets a blurry edge pixel be "background white or outline colour" in all channels at once, instead of
one wide logistic per channel.

The decoder emits K (1 + 2C) maps per pixel, in this order: K mixture logits, K*C mean logits (sigmoid keeps
each mean in [0, 1]) and K*C log-scales, each group ordered component-major. The decoder graph's output `x` is
the mixture's mean image sum_k pi_k mean_k, displayable; its output `params` carries all maps.

Channel coupling (PixelCNN++, section 2.2), an option: within a component the channels are no longer
independent; each channel's logistic is shifted linearly by the channels before it,

    loc_R = mu_R,  loc_G = mu_G + a (x_R - 1/2),  loc_B = mu_B + b (x_R - 1/2) + c (x_G - 1/2),

with a, b, c = tanh(maps) in [-1, 1]. This is PixelCNN++'s mu_G + a x_R on its [-1, 1] pixels written on our
[0, 1] ones (x' = 2x - 1 turns a x'_R / 2 into a (x_R - 1/2)), so the sigmoid means still cover the useful
locations. The coupled layout appends K * C(C-1)/2 coefficient maps (component-major; for RGB a, b, c) after
the log-scales: K (1 + 2C + C(C-1)/2) maps, 10K for RGB. p(x) = sum_k pi_k prod_c P(x_c | x_<c, k) is still
normalised: each factor is a discretized logistic over the 256 values of x_c. The mean image applies the
coefficients to the previous channels' component means (each clamped to [0, 1]), which is the component's
mean up to the clamp and the edge bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The bins and floors are the contract's, so the service scores with the same numbers.
from vae_contract.likelihoods import BINS, HALF_BIN, MIN_BIN_PROB, MIN_LOG_SCALE

# PixelCNN++ uses 10 components on 32x32 CIFAR-10; 5 cover an edge pixel's few colours at a third the cost.
DEFAULT_COMPONENTS = 5


def coupling_maps(channels: int) -> int:
    """Coupling coefficients per component: one per pair of channels (c, j < c); 3 for RGB, 0 for gray."""
    return channels * (channels - 1) // 2


def param_channels(channels: int, components: int, coupled: bool = False) -> int:
    """Decoder maps per pixel: K mixture logits + K*C mean logits + K*C log-scales (+ K*C(C-1)/2 coupling
    coefficients)."""
    return components * (1 + 2 * channels + (coupling_maps(channels) if coupled else 0))


def _components(params: torch.Tensor, channels: int, coupled: bool) -> int:
    p = params.shape[1]
    per_component = param_channels(channels, 1, coupled)
    if p % per_component:
        extra = f" + {coupling_maps(channels)}" if coupled else ""
        raise ValueError(f"{p} parameter maps do not split into K (1 + 2*{channels}{extra}) for any K")
    return p // per_component


def mixture_parts(
    params: torch.Tensor, channels: int, coupled: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, maps, H, W) -> the K mixture logits (B, K, H, W), means in [0, 1] and clamped log-scales, each
    (B, K, C, H, W), and, coupled, the coefficients tanh(maps) (B, K, C(C-1)/2, H, W) (else None).

    One split, not a slice per piece: a slice's gradient is a zero tensor of the whole layout's size, a
    split's is one concatenation; the slices' zero-filling was a fifth of a 7-group training step."""
    b, _, h, w = params.shape
    k = _components(params, channels, coupled)
    sizes = [k, k * channels, k * channels] + ([k * coupling_maps(channels)] if coupled else [])
    logits, means, log_scales, *coupling = params.split(sizes, dim=1)
    means = torch.sigmoid(means).reshape(b, k, channels, h, w)
    log_scales = torch.clamp(log_scales.reshape(b, k, channels, h, w), min=MIN_LOG_SCALE)
    coefficients = torch.tanh(coupling[0]).reshape(b, k, -1, h, w) if coupled else None
    return logits, means, log_scales, coefficients


def split_params(
    params: torch.Tensor, channels: int, coupled: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, maps, H, W) -> log mixture weights (B, K, 1, H, W), means in [0, 1] and clamped log-scales,
    each (B, K, C, H, W) (before any coupling: `coupling_coefficients` has the rest of a coupled layout)."""
    logits, means, log_scales, _ = mixture_parts(params, channels, coupled)
    return F.log_softmax(logits, dim=1).unsqueeze(2), means, log_scales


def coupling_coefficients(params: torch.Tensor, channels: int) -> torch.Tensor:
    """The coupled layout's coefficients tanh(maps), (B, K, C(C-1)/2, H, W), pairs ordered (1,0), (2,0),
    (2,1): a, b, c for RGB."""
    coefficients = mixture_parts(params, channels, coupled=True)[3]
    assert coefficients is not None
    return coefficients


def coupled_locations(
    means: torch.Tensor, coefficients: torch.Tensor, x: torch.Tensor | None = None
) -> torch.Tensor:
    """Each channel's logistic location shifted by the channels before it, (B, K, C, H, W).

    x (B, 1, C, H, W) given: loc_c = mu_c + sum_{j<c} coef_cj (x_j - 1/2), the likelihood's locations. x
    None: the component's mean image, the previous channels at their own means, each clamped to [0, 1]."""
    channels = means.shape[2]
    out: list[torch.Tensor] = []
    pair = 0
    for c in range(channels):
        loc = means[:, :, c]
        for j in range(c):
            previous = out[j] if x is None else x[:, :, j]
            loc = loc + coefficients[:, :, pair] * (previous - 0.5)
            pair += 1
        out.append(torch.clamp(loc, 0.0, 1.0) if x is None else loc)
    return torch.stack(out, dim=2)


def mean_image(params: torch.Tensor, channels: int, coupled: bool = False) -> torch.Tensor:
    """The mixture's mean image sum_k pi_k mean_k, (B, C, H, W) in [0, 1] (the logistic's edge bins make the
    discretized mean differ from it by at most a bin's width where a component sits near 0 or 1)."""
    logits, means, _, coefficients = mixture_parts(params, channels, coupled)
    if coefficients is not None:
        means = coupled_locations(means, coefficients)
    return (F.log_softmax(logits, dim=1).exp().unsqueeze(2) * means).sum(dim=1)


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) per pixel and channel under one discretized logistic, shape of the broadcast; x = k / 255."""
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


def mixture_log_prob(params: torch.Tensor, x: torch.Tensor, coupled: bool = False) -> torch.Tensor:
    """log p(pixel) (B, H, W): logsumexp_k [log pi_k + sum_c log P(x_c | x_<c, k)]."""
    channels = x.shape[1]
    logits, means, log_scales, coefficients = mixture_parts(params, channels, coupled)
    xs = x.unsqueeze(1)  # (B, 1, C, H, W)
    if coefficients is not None:
        means = coupled_locations(means, coefficients, xs)
    per_channel = discretized_logistic_log_prob(xs, means, log_scales)  # (B, K, C, H, W)
    return torch.logsumexp(F.log_softmax(logits, dim=1) + per_channel.sum(dim=2), dim=1)


def discretized_logistic_nll(params: torch.Tensor, x: torch.Tensor, coupled: bool = False) -> torch.Tensor:
    """-log p(x|z) per image in nats, from decoder output params (B, maps, H, W) and x (B, C, H, W)."""
    return -mixture_log_prob(params, x, coupled).flatten(1).sum(dim=1)


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """A code length in nats per image -> bits per dimension (pixel and channel)."""
    return nats_per_image / (dims * math.log(2))


def noise_maps(components: int, channels: int) -> int:
    """Noise maps per pixel a mixture draw reads (`draw_mixture`): a Gumbel per component, a logistic per
    channel."""
    return components + channels


def draw_mixture(
    logits: torch.Tensor,
    locations: torch.Tensor,
    log_scales: torch.Tensor,
    coefficients: torch.Tensor | None,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One draw per pixel (B, C, H, W) of 8-bit values k/255 from a discretized logistic mixture, with the
    randomness given: noise (B, M + C, H, W) holds T g_m, g_m ~ Gumbel(0, 1) per component, then T e_c,
    e_c ~ Logistic(0, 1) per channel, for a pixel temperature T (the graph has no random nodes).

    The component is argmax_m (logit_m + T g_m): the Gumbel-max trick, a draw from softmax(logits / T).
    Within it, channel c is loc_c + s_c T e_c with loc_c coupled to the channels already drawn (PixelCNN++'s
    coupling reads the pixel's own earlier channels), rounded to the nearest k/255 and clamped to [0, 1]:
    rounding a continuous logistic draw falls in bin k with exactly the bin's probability, and the clamp
    gives the edge bins their tails, so at T = 1 this is the likelihood's own distribution. T = 0 picks the
    heaviest component at its location: the mode of the component choice, sharp where the mean blends.

    logits (B, M, H, W); locations and log-scales (B, M, C, H, W); coefficients (B, M, C(C-1)/2, H, W) or
    None (no coupling)."""
    m, c = logits.shape[1], locations.shape[2]
    gumbel, logistic = noise.split([m, c], dim=1)
    scores = logits + gumbel
    chosen = (scores == scores.amax(dim=1, keepdim=True)).to(locations.dtype).unsqueeze(2)  # (B, M, 1, H, W)
    mu = (chosen * locations).sum(dim=1)  # (B, C, H, W)
    scale = (chosen * log_scales).sum(dim=1).exp()
    coef = None if coefficients is None else (chosen * coefficients).sum(dim=1)
    drawn: list[torch.Tensor] = []
    pair = 0
    for channel in range(c):
        loc = mu[:, channel]
        for previous in range(channel):
            assert coef is not None
            loc = loc + coef[:, pair] * (drawn[previous] - 0.5)
            pair += 1
        value = torch.clamp(loc + scale[:, channel] * logistic[:, channel], 0.0, 1.0)
        drawn.append(torch.round(value * (BINS - 1)) / (BINS - 1))
    return torch.stack(drawn, dim=1)


def draw_image(params: torch.Tensor, channels: int, coupled: bool, noise: torch.Tensor) -> torch.Tensor:
    """A draw (B, C, H, W) from the mixture whose maps are `params` (a factorised decoder's output)."""
    logits, means, log_scales, coefficients = mixture_parts(params, channels, coupled)
    return draw_mixture(logits, means, log_scales, coefficients, noise)
