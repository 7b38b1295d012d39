"""Residual blocks in the convolutional VAE: the default network is today's to the parameter, blocks add
exactly their convolutions, and every supported image size keeps its shapes."""

import pytest
import torch

from training.config import TrainConfig
from training.models import ResBlock, build_model, count_parameters

pytestmark = pytest.mark.timeout(60)

EMOJI = {
    "arch": "conv",
    "conv_channels": (32, 64, 128),
    "hidden_dims": (512,),
    "latent_dim": 64,
    "activation": "elu",
    "likelihood": "discretized_logistic",
}


def conv(fan_in: int, fan_out: int, kernel: int) -> int:
    return fan_in * fan_out * kernel * kernel + fan_out


def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def block(width: int) -> int:
    return 2 * conv(width, width, 3)


def test_default_conv_networks_are_unchanged_to_the_parameter():
    # models/emoji/1's network (35 = 5 (1 + 2*3) maps), counted by hand layer by layer.
    emoji = (
        conv(3, 32, 4) + conv(32, 64, 4) + conv(64, 128, 4) + linear(128 * 4 * 4, 512) + 2 * linear(512, 64)
    ) + (linear(64, 512) + linear(512, 2048) + conv(128, 64, 4) + conv(64, 32, 4) + conv(32, 35, 4))
    assert count_parameters(build_model(TrainConfig(**EMOJI), (3, 32, 32))) == emoji == 2_546_147
    # The 28x28 conv default: 28 -> 14 -> 7 with 32 and 64 channels, 400 hidden, 20 latent, one map.
    mnist = (conv(1, 32, 4) + conv(32, 64, 4) + linear(64 * 7 * 7, 400) + 2 * linear(400, 20)) + (
        linear(20, 400) + linear(400, 3136) + conv(64, 32, 4) + conv(32, 1, 4)
    )
    model = build_model(TrainConfig(arch="conv"), (1, 28, 28))
    assert count_parameters(model) == mnist == 2_603_465
    assert not any(isinstance(m, ResBlock) for m in model.modules())


def test_blocks_add_their_convolutions_and_a_full_resolution_head():
    base = count_parameters(build_model(TrainConfig(**EMOJI), (3, 32, 32)))
    model = build_model(TrainConfig(**EMOJI, res_blocks=1, channel_coupling=True), (3, 32, 32))
    encoder_blocks = block(32) + block(64) + block(128)  # after each downsampling: 16, 8, 4
    decoder_blocks = block(64) + block(32) + block(32)  # after each upsampling: 8, 16, 32
    # The last transposed convolution keeps 32 channels; a 1x1 convolution emits 5 (1 + 2*3 + 3) = 50 maps.
    head = conv(32, 32, 4) - conv(32, 35, 4) + conv(32, 50, 1)
    assert count_parameters(model) == base + encoder_blocks + decoder_blocks + head
    assert sum(isinstance(m, ResBlock) for m in model.modules()) == 6


@pytest.mark.parametrize("side", [28, 32, 64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_shapes_at_every_supported_size(side, likelihood):
    channels = 1 if side == 28 else 3
    config = TrainConfig(arch="conv", hidden_dims=(32,), latent_dim=6, likelihood=likelihood, res_blocks=2)
    model = build_model(config, (channels, side, side))
    x = torch.rand(2, channels, side, side)
    out, mean, log_var, z = model(x)
    maps = channels if likelihood == "bernoulli" else 5 * (1 + 2 * channels)
    assert out.shape == (2, maps, side, side)
    assert mean.shape == log_var.shape == z.shape == (2, 6)
    image = model.decode(z)
    assert image.shape == (2, channels, side, side) and image.min() >= 0 and image.max() <= 1


def test_a_block_is_the_identity_plus_its_branch():
    torch.manual_seed(0)
    res = ResBlock(4, torch.nn.ReLU)
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(res(x), x + res.body(x))
    for layer in res.body:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    assert torch.equal(res(x), x)


def test_res_blocks_are_validated():
    with pytest.raises(ValueError, match="res_blocks needs arch=conv"):
        TrainConfig(res_blocks=1).validated()
    with pytest.raises(ValueError, match="res_blocks must be >= 0"):
        TrainConfig(arch="conv", res_blocks=-1).validated()
