"""Images drawn from p(x | z) instead of its mean: the randomness, seeded, and the draws made in numpy.

A decoder's mean image averages every image the model finds likely given z: for a mixture over colours
(PixelCNN++'s discretized logistic) an edge pixel that is "white or outline" comes out grey, and a flat
area that is "this skin tone or that one" comes out beige. Drawing each pixel from its distribution gives
one of the images instead; with pixel groups (training/pixel_groups.py) each group is drawn given the
groups already drawn, so neighbouring pixels agree with each other (PixelVAE, Gulrajani et al. 2017).

The pixel temperature T is separate from the latent temperature: it sharpens the pixel distributions, the
mixture weights to softmax(logits / T) and each logistic's scale to T s, so T = 1 is the model's own
distribution and T -> 0 the heaviest component at its location (the mode of the component choice, not the
blend the mean is). Bernoulli pixels take logit(p) / T: T -> 0 thresholds at 1/2.

Randomness comes from the request's seed through `pixel_rng`, a stream of its own beside the latent draws
(numpy SeedSequence [seed, 1]), so the latents of a seed do not change when pixels are drawn and the same
request always gives the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PixelMode = Literal["sample", "mean"]
PIXEL_MODES: tuple[PixelMode, ...] = ("sample", "mean")
# The second word of the seed sequence: the pixel noise's stream, apart from the latents' (which use the bare
# seed, as they always have).
PIXEL_STREAM = 1
BINS = 256
# The pixel temperature a request gets unless it asks (docs/samples.md, bench/sample_quality.py): on emoji/5,
# 0.5 is the only one of 0, 0.3, 0.5, 0.7, 1 whose draws are as sharp as real emoji (0.92x their gradient
# energy; 0.7 is 1.27x, 1 is 1.91x, with speckle), with the best precision and a Frechet distance within 4% of
# the lowest.
DEFAULT_PIXEL_TEMPERATURE = 0.5
MAX_PIXEL_TEMPERATURE = 2.0


@dataclass(frozen=True)
class PixelDraw:
    """How a request wants its pixels drawn: a seed and a pixel temperature (>= 0)."""

    seed: int
    temperature: float = 1.0
    # One noise draw for every image of the request (an interpolation path): the images then differ only
    # where their latents make them differ, instead of flickering from step to step.
    shared: bool = False


def pixel_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, PIXEL_STREAM])


def sampler_noise(
    n: int,
    maps: int,
    channels: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    temperature: float,
    shared: bool = False,
) -> np.ndarray:
    """(n, maps, H, W) float32, the sampler graph's `noise`: T g (Gumbel(0, 1), one per mixture component)
    in the first maps - C maps, T e (Logistic(0, 1), one per channel) in the last C. shared: one draw,
    repeated n times."""
    if shared:
        one = sampler_noise(1, maps, channels, height, width, rng, temperature)
        return np.repeat(one, n, axis=0)
    components = maps - channels
    gumbel = rng.gumbel(size=(n, components, height, width))
    logistic = rng.logistic(size=(n, channels, height, width))
    return (np.concatenate([gumbel, logistic], axis=1) * temperature).astype(np.float32)


def draw_bernoulli(
    p: np.ndarray, rng: np.random.Generator, temperature: float, shared: bool = False
) -> np.ndarray:
    """Binary pixels, each 1 with probability sigmoid(logit(p) / T); T = 0: p > 1/2."""
    u = rng.random(p.shape[1:]) if shared else rng.random(p.shape)
    if temperature == 0:
        return (p > 0.5).astype(np.float32)
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    sharpened = 1.0 / (1.0 + np.exp(-(np.log(q) - np.log1p(-q)) / temperature))
    return (u < sharpened).astype(np.float32)


def draw_gaussian(
    mean: np.ndarray, sigma: float, rng: np.random.Generator, temperature: float, shared: bool = False
) -> np.ndarray:
    """mean + T sigma eps, clipped to [0, 1]: the Gaussian likelihood's draw."""
    eps = rng.standard_normal(mean.shape[1:] if shared else mean.shape)
    return np.clip(mean + temperature * sigma * eps, 0.0, 1.0).astype(np.float32)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def draw_mixture(params: np.ndarray, channels: int, coupled: bool, noise: np.ndarray) -> np.ndarray:
    """(N, C, H, W) 8-bit values from a factorised decoder's mixture maps (N, K(1 + 2C [+ C(C-1)/2]), H, W),
    as the sampler graph draws each group (`training.likelihoods.draw_mixture`, term for term): component
    argmax_k(logit_k + noise_k), then per channel loc_c + s_c noise_{K+c} with loc_c coupled to the channels
    already drawn, rounded to k/255 and clamped to [0, 1]."""
    n, _, h, w = params.shape
    pairs = channels * (channels - 1) // 2 if coupled else 0
    k = params.shape[1] // (1 + 2 * channels + pairs)
    p = params.astype(np.float64)
    logits = p[:, :k]
    means = _sigmoid(p[:, k : k + k * channels]).reshape(n, k, channels, h, w)
    log_s = np.maximum(p[:, k + k * channels : k + 2 * k * channels].reshape(n, k, channels, h, w), -8.0)
    chosen = np.argmax(logits + noise[:, :k], axis=1)[:, None, None]  # (N, 1, 1, H, W)
    mu = np.take_along_axis(means, chosen, axis=1)[:, 0]  # (N, C, H, W)
    scale = np.exp(np.take_along_axis(log_s, chosen, axis=1)[:, 0])
    coef = None
    if coupled:
        coefficients = np.tanh(p[:, k + 2 * k * channels :]).reshape(n, k, pairs, h, w)
        coef = np.take_along_axis(coefficients, chosen, axis=1)[:, 0]
    drawn: list[np.ndarray] = []
    pair = 0
    for c in range(channels):
        loc = mu[:, c]
        for previous in range(c):
            assert coef is not None
            loc = loc + coef[:, pair] * (drawn[previous] - 0.5)
            pair += 1
        value = np.clip(loc + scale[:, c] * noise[:, k + c], 0.0, 1.0)
        drawn.append(np.round(value * (BINS - 1)) / (BINS - 1))
    return np.stack(drawn, axis=1).astype(np.float32)
