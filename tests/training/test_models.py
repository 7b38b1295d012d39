import pytest
import torch

from training.config import TrainConfig
from training.models import auto_conv_channels, build_model, count_parameters


@pytest.mark.parametrize(
    ("arch", "shape", "latent"),
    [
        ("mlp", (1, 28, 28), 20),
        ("conv", (1, 28, 28), 2),
        ("conv", (3, 32, 32), 16),
        ("conv", (3, 64, 64), 32),
    ],
)
def test_shapes_and_image_range(arch, shape, latent):
    model = build_model(TrainConfig(arch=arch, latent_dim=latent), shape)
    x = torch.rand(5, *shape)
    mean, log_var = model.encode(x)
    assert mean.shape == log_var.shape == (5, latent)
    logits, mean2, _, z = model(x)
    assert logits.shape == (5, *shape) and z.shape == (5, latent)
    torch.testing.assert_close(mean, mean2)
    image = model.decode(z).detach()
    assert image.shape == (5, *shape)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_mlp_matches_pytorch_examples_size():
    # fc1 784x400, fc21/fc22 400x20, fc3 20x400, fc4 400x784, all with biases.
    expected = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert count_parameters(build_model(TrainConfig(), (1, 28, 28))) == expected


def test_reparameterize_is_mean_plus_scaled_noise():
    mean = torch.tensor([[1.0, -2.0]])
    log_var = torch.tensor([[0.0, 2 * torch.log(torch.tensor(3.0)).item()]])  # std 1 and 3
    eps = torch.randn((1, 2), generator=torch.Generator().manual_seed(7))
    z = build_model(TrainConfig(), (1, 28, 28)).reparameterize(
        mean, log_var, torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(z, torch.tensor([[1.0 + eps[0, 0], -2.0 + 3.0 * eps[0, 1]]]))


def test_autoencoder_baseline_uses_the_mean():
    model = build_model(TrainConfig(variational=False), (1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    _, mean, _, z = model(x)
    torch.testing.assert_close(z, mean)


def test_auto_conv_channels():
    assert auto_conv_channels(28, 28) == (32, 64)
    assert auto_conv_channels(32, 32) == (32, 64)
    assert auto_conv_channels(64, 64) == (32, 64, 128)
    with pytest.raises(ValueError, match="downsampled"):
        auto_conv_channels(7, 7)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="likelihood"):
        TrainConfig(likelihood="poisson").validated()
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"latent": 3})
    assert TrainConfig.from_dict(TrainConfig(hidden_dims=(8, 8)).to_dict()) == TrainConfig(hidden_dims=(8, 8))
