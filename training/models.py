"""VAE networks: an MLP as in pytorch/examples and a convolutional one for 28x28, 32x32 and 64x64 images.

Both expose the lecture's three steps: `encode` (x -> mean, log_var of q(z|x)), `reparameterize`
(z = mean + exp(log_var / 2) * eps) and `decode_logits` (z -> per-pixel logits; the image mean is their
sigmoid, so it always lies in [0, 1]).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from training.config import TrainConfig
from training.pixel_groups import FEATURES, PIXEL_LEVELS, PixelGroupDecoder
from training.priors import FixedMixture, VampPrior

_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU}


def auto_conv_channels(height: int, width: int) -> tuple[int, ...]:
    """Halve the image until its side is <= 8: 28 -> 14 -> 7, 32 -> 16 -> 8, 64 -> 32 -> 16 -> 8."""
    channels: list[int] = []
    h, w = height, width
    while max(h, w) > 8 and h % 2 == 0 and w % 2 == 0:
        channels.append(32 * 2 ** len(channels))
        h, w = h // 2, w // 2
    if not channels:
        raise ValueError(f"image {height}x{width} cannot be downsampled by 2; use arch=mlp")
    return tuple(channels)


class ResBlock(nn.Module):
    """x + conv3x3(act(conv3x3(act(x)))) at a fixed resolution and width: the pre-activation residual block
    (He et al. 2016) that VAE decoders stack per resolution (IAF-VAE, NVAE) to add depth without losing the
    identity path."""

    def __init__(self, channels: int, activation: type[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, config: TrainConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.image_shape = image_shape  # (C, H, W)
        self.latent_dim = config.latent_dim
        act = _ACTIVATIONS[config.activation]
        c, h, w = image_shape
        out_c = c
        self.pixel_decoder: PixelGroupDecoder | None = None
        if config.likelihood == "discretized_logistic":  # mixture weights, means and log-scales per pixel
            from training.likelihoods import param_channels

            out_c = param_channels(c, config.mixture_components, config.channel_coupling)
            if config.pixel_groups > 1:  # the decoder emits features; the group net emits the maps
                self.pixel_decoder = PixelGroupDecoder(
                    FEATURES, c, out_c, config.context_width, config.context_layers, act,
                    config.neighbour_anchors, levels=PIXEL_LEVELS[config.pixel_groups],
                )  # fmt: skip
                out_c = FEATURES
        if config.arch == "mlp":
            pixels = c * h * w
            hidden = list(config.hidden_dims)
            self.encoder_body: nn.Module = nn.Sequential(nn.Flatten(), _mlp([pixels, *hidden], act))
            feature_dim = hidden[-1] if hidden else pixels
            self.decoder_body: nn.Module = nn.Sequential(
                _mlp([config.latent_dim, *hidden], act),
                nn.Linear(hidden[-1] if hidden else config.latent_dim, out_c * h * w),
                nn.Unflatten(1, (out_c, h, w)),
            )
        else:
            chans = list(config.conv_channels or auto_conv_channels(h, w))
            scale = 2 ** len(chans)
            if h % scale or w % scale:
                raise ValueError(f"image {h}x{w} is not divisible by {scale} for conv_channels {chans}")
            blocks = config.res_blocks
            down: list[nn.Module] = []
            for fan_in, fan_out in zip([c, *chans[:-1]], chans, strict=True):
                down += [nn.Conv2d(fan_in, fan_out, 4, stride=2, padding=1), act()]  # halves H and W
                down += [ResBlock(fan_out, act) for _ in range(blocks)]
            flat = chans[-1] * (h // scale) * (w // scale)
            hidden = list(config.hidden_dims)
            self.encoder_body = nn.Sequential(*down, nn.Flatten(), _mlp([flat, *hidden], act))
            feature_dim = hidden[-1] if hidden else flat
            up: list[nn.Module] = []
            rev = chans[::-1]
            # Without blocks the last transposed convolution emits the output maps itself; with them it keeps
            # the first level's width, blocks work at full resolution and a 1x1 convolution emits the maps.
            last = out_c if blocks == 0 else chans[0]
            for fan_in, fan_out in zip(rev, [*rev[1:], last], strict=True):
                up.append(nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1))  # doubles H and W
                up.append(act())
                up += [ResBlock(fan_out, act) for _ in range(blocks)]
            if blocks:
                up += [act(), nn.Conv2d(chans[0], out_c, 1)]
            elif self.pixel_decoder is None:
                up.pop()  # the last layer emits logits
            self.decoder_body = nn.Sequential(
                _mlp([config.latent_dim, *hidden, flat], act),
                nn.Unflatten(1, (chans[-1], h // scale, w // scale)),
                *up,
            )
        self.to_mean = nn.Linear(feature_dim, config.latent_dim)
        self.to_log_var = nn.Linear(feature_dim, config.latent_dim)
        # A learned prior lives with the networks, so its parameters are trained and checkpointed with them.
        self.prior: VampPrior | FixedMixture | None = None
        if config.prior == "vamp":
            self.prior = VampPrior(config.vamp_components, image_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder_body(x)  # (B, F)
        return self.to_mean(features), self.to_log_var(features)  # (B, D), (B, D)

    @staticmethod
    def reparameterize(
        mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * log_var) * eps

    def decode_logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) logits; (B, K(1+2C), H, W) maps for discretized_logistic. With pixel groups the maps
        of later groups depend on earlier pixels: those of x when given (the likelihood of x), else those the
        decoder decoded itself."""
        out = self.decoder_body(z)
        if self.pixel_decoder is None:
            return out
        if x is None:
            return self.pixel_decoder.decode(out, self.config.channel_coupling)[1]
        return self.pixel_decoder.params(out, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] (pixel groups: each group at its mean given those before)."""
        if self.pixel_decoder is not None:
            return self.pixel_decoder.decode(self.decoder_body(z), self.config.channel_coupling)[0]
        out = self.decode_logits(z)
        if self.config.likelihood == "discretized_logistic":
            from training.likelihoods import mean_image

            return mean_image(out, self.image_shape[0], self.config.channel_coupling)
        return torch.sigmoid(out)

    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The prior as a diagonal Gaussian mixture (means (K, D), log_vars (K, D), log_weights (K,)), or None
        for N(0, I). The VampPrior: the encoder at the pseudo-inputs, uniform weights (Tomczak and Welling,
        eq. 9)."""
        if self.prior is None:
            return None
        if isinstance(self.prior, FixedMixture):
            return self.prior.mixture()
        means, log_vars = self.encode(self.prior.inputs())
        uniform = -math.log(self.prior.components)
        log_weights = torch.full((self.prior.components,), uniform, device=means.device, dtype=means.dtype)
        return means, log_vars, log_weights

    def noise_maps(self) -> int:
        """Noise maps per pixel `draw` reads; 0 where no mixture is drawn in a graph."""
        if self.config.likelihood != "discretized_logistic":
            return 0
        from training.likelihoods import noise_maps

        if self.pixel_decoder is not None:
            return self.pixel_decoder.noise_maps(self.config.mixture_components)
        return noise_maps(self.config.mixture_components, self.image_shape[0])

    def draw(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """An image drawn from p(x|z) with the randomness given (`training.likelihoods.draw_mixture`):
        noise (B, noise_maps, H, W); pixel groups are drawn one after another."""
        coupled = self.config.channel_coupling
        if self.pixel_decoder is not None:
            return self.pixel_decoder.draw(self.decoder_body(z), coupled, noise)
        from training.likelihoods import draw_image

        return draw_image(self.decode_logits(z), self.image_shape[0], coupled, noise)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encode(x)
        z = self.reparameterize(mean, log_var, generator) if self.config.variational else mean
        return self.decode_logits(z, x), mean, log_var, z


def build_model(config: TrainConfig, image_shape: tuple[int, int, int]) -> VAE:
    return VAE(config, image_shape)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
