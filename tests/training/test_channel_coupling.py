"""PixelCNN++'s linear coupling of the channels: the coupled log-likelihood against a hand computation,
the joint summing to 1 and each RGB channel given the previous ones, the coupled mean image, numpy (service)
against torch (training), and a coupled model's decoder layout."""

import math

import numpy as np
import pytest
import torch

from training.likelihoods import (
    coupling_coefficients,
    discretized_logistic_nll,
    mean_image,
    mixture_log_prob,
    param_channels,
    split_params,
)
from vae_contract.likelihoods import discretized_logistic_nll as service_nll

pytestmark = pytest.mark.timeout(60)
H = 1 / 510


def sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def one_pixel(mix, means, log_scales, coefficients, size=(1, 1)) -> torch.Tensor:
    """Coupled decoder maps (1, K(1+2C+C(C-1)/2), *size) from per-component lists, every pixel alike:
    mixture logits, sigmoid means (given as means), log-scales and tanh coefficients (given as values)."""
    raw = [
        *mix,
        *(logit(m) for comp in means for m in comp),
        *(s for comp in log_scales for s in comp),
        *(math.atanh(a) for comp in coefficients for a in comp),
    ]
    return torch.tensor(raw, dtype=torch.float64).view(1, -1, 1, 1).expand(1, len(raw), *size).contiguous()


def bin_prob(x: float, loc: float, s: float) -> float:
    """P(x) of a discretized logistic on k/255 with edge bins to +-infinity, by hand."""
    if x < H:
        return sigmoid((x + H - loc) / s)
    if x > 1 - H:
        return 1 - sigmoid((x - H - loc) / s)
    return sigmoid((x + H - loc) / s) - sigmoid((x - H - loc) / s)


def test_layout_sizes():
    assert param_channels(3, 5, coupled=True) == 50  # K (1 + 2*3 + 3)
    assert param_channels(3, 5) == 35
    assert param_channels(1, 4, coupled=True) == param_channels(1, 4) == 12  # one channel: nothing to couple
    with pytest.raises(ValueError, match=r"1 \+ 2\*3 \+ 3"):
        split_params(torch.zeros(1, 35, 2, 2), 3, coupled=True)


def test_coupled_log_likelihood_by_hand():
    # One component, one pixel (R, G, B) = (200, 90, 30)/255: G's location is mu_G + a (x_R - 1/2), B's is
    # mu_B + b (x_R - 1/2) + c (x_G - 1/2); each channel is then an ordinary discretized logistic.
    mu, s, (a, b, c) = (0.7, 0.4, 0.2), (0.05, 0.08, 0.1), (0.6, -0.3, 0.5)
    x = (200 / 255, 90 / 255, 30 / 255)
    params = one_pixel([0.0], [mu], [[math.log(v) for v in s]], [(a, b, c)])
    loc = (mu[0], mu[1] + a * (x[0] - 0.5), mu[2] + b * (x[0] - 0.5) + c * (x[1] - 0.5))
    expected = -sum(math.log(bin_prob(x[i], loc[i], s[i])) for i in range(3))
    got = discretized_logistic_nll(params, torch.tensor(x, dtype=torch.float64).view(1, 3, 1, 1), True)
    assert float(got[0]) == pytest.approx(expected, rel=1e-10)
    # The coefficients matter: read as the uncoupled layout's first 7 maps, the same pixel costs otherwise.
    uncoupled = discretized_logistic_nll(params[:, :7], torch.tensor(x, dtype=torch.float64).view(1, 3, 1, 1))
    assert abs(float(uncoupled[0]) - expected) > 0.1


def test_two_component_mixture_by_hand_at_the_edges():
    # White R (top edge bin) and black B (bottom edge bin), two components with their own coefficients.
    x = (1.0, 128 / 255, 0.0)
    mix = [0.3, -0.4]
    means = [(0.9, 0.5, 0.1), (0.2, 0.6, 0.4)]
    scales = [(0.1, 0.07, 0.2), (0.3, 0.05, 0.15)]
    coefs = [(0.9, 0.2, -0.7), (-0.5, 0.4, 0.1)]
    params = one_pixel(mix, means, [[math.log(v) for v in comp] for comp in scales], coefs)
    weights = np.exp(mix) / np.exp(mix).sum()
    total = 0.0
    for k in range(2):
        (mr, mg, mb), (a, b, c) = means[k], coefs[k]
        loc = (mr, mg + a * (x[0] - 0.5), mb + b * (x[0] - 0.5) + c * (x[1] - 0.5))
        total += weights[k] * math.prod(bin_prob(x[i], loc[i], scales[k][i]) for i in range(3))
    got = mixture_log_prob(params, torch.tensor(x, dtype=torch.float64).view(1, 3, 1, 1), coupled=True)
    assert float(got.squeeze()) == pytest.approx(math.log(total), rel=1e-10)


def test_two_channel_joint_over_all_256_squared_values_sums_to_one():
    # The code is written for any C; with C = 2 the whole joint (65536 values, as a 256x256 "image") is
    # small enough to sum: two components, one coupling coefficient each.
    params = one_pixel(
        [0.2, -0.1],
        [(0.3, 0.6), (0.8, 0.2)],
        [[math.log(0.1), math.log(0.05)], [math.log(0.02), math.log(0.3)]],
        [(0.9,), (-0.8,)],
        size=(256, 256),
    )
    assert params.shape[1] == param_channels(2, 2, coupled=True) == 12
    values = torch.arange(256, dtype=torch.float64) / 255
    r, g = torch.meshgrid(values, values, indexing="ij")
    joint = mixture_log_prob(params, torch.stack([r, g]).unsqueeze(0), coupled=True).exp()
    assert float(joint.sum()) == pytest.approx(1.0, abs=1e-6)


def test_each_channel_sums_to_one_given_the_previous_channels():
    # One component: p(r, g, b) = P(r) P(g | r) P(b | r, g). For fixed r, all 65536 (g, b) at once: summing
    # over b must leave P(r) P(g | r) (by hand) for every g, so P(b | r, g) sums to 1; summing over g and b
    # leaves P(r), so P(g | r) sums to 1 too.
    mu, s, (a, b, c) = (0.3, 0.6, 0.5), (0.1, 0.03, 0.2), (0.9, -0.6, 0.4)
    params = one_pixel([0.0], [mu], [[math.log(v) for v in s]], [(a, b, c)], size=(256, 256))
    values = torch.arange(256, dtype=torch.float64) / 255
    g, bb = torch.meshgrid(values, values, indexing="ij")
    for r in (0.0, 77 / 255, 1.0):
        x = torch.stack([torch.full_like(g, r), g, bb]).unsqueeze(0)
        joint = mixture_log_prob(params, x, coupled=True).exp()[0]  # (g, b)
        p_r = bin_prob(r, mu[0], s[0])
        p_g = [bin_prob(float(v), mu[1] + a * (r - 0.5), s[1]) for v in values]
        assert np.allclose(joint.sum(dim=1).numpy(), p_r * np.array(p_g), rtol=1e-6, atol=1e-9)
        assert float(joint.sum()) == pytest.approx(p_r, rel=1e-6)


def test_coupled_mean_image_by_hand_and_clamped():
    mu, (a, b, c) = (0.8, 0.3, 0.9), (0.9, 0.7, 0.6)
    params = one_pixel([0.0], [mu], [[-3.0, -3.0, -3.0]], [(a, b, c)])
    m_r = mu[0]
    m_g = min(1.0, max(0.0, mu[1] + a * (m_r - 0.5)))  # 0.57
    m_b = min(1.0, max(0.0, mu[2] + b * (m_r - 0.5) + c * (m_g - 0.5)))  # 0.9 + 0.21 + 0.042 -> 1
    got = mean_image(params, 3, coupled=True).squeeze().tolist()
    assert got == pytest.approx([m_r, m_g, m_b], abs=1e-12) and m_b == 1.0
    assert torch.allclose(coupling_coefficients(params, 3).squeeze(), torch.tensor([a, b, c]).double())


def test_service_numpy_agrees_with_training_torch():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 3, 6, 6)).astype(np.float32) / 255
    x[0] = 1.0
    x[1, :, :3] = 0.0
    params = (rng.standard_normal((3, 50, 6, 6)) * 3).astype(np.float32)
    ours = service_nll(x, params, coupled=True)
    theirs = discretized_logistic_nll(torch.from_numpy(params).double(), torch.from_numpy(x).double(), True)
    assert np.allclose(ours, theirs.numpy(), rtol=1e-10)
    assert not np.allclose(ours, service_nll(x, params[:, :35]), rtol=1e-3)
    with pytest.raises(ValueError, match="do not fit"):
        service_nll(x, params[:, :35], coupled=True)


def test_coupled_model_emits_the_coupled_layout_and_trains():
    from training.config import TrainConfig
    from training.losses import training_loss
    from training.models import build_model

    config = TrainConfig(
        arch="conv",
        hidden_dims=(16,),
        latent_dim=4,
        likelihood="discretized_logistic",
        mixture_components=3,
        channel_coupling=True,
    )
    model = build_model(config, (3, 16, 16))
    z = torch.zeros(2, 4)
    assert model.decode_logits(z).shape == (2, 30, 16, 16)
    image = model.decode(z)
    assert image.shape == (2, 3, 16, 16) and image.min() >= 0 and image.max() <= 1
    x = torch.rand(2, 3, 16, 16)
    loss, terms = training_loss(model, (x * 255).round() / 255, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and terms["reconstruction"].shape == (2,)
    head = model.decoder_body[-1]
    assert head.weight.grad is not None and float(head.weight.grad[27:].abs().sum()) > 0  # coefficients learn
    with pytest.raises(ValueError, match="channel_coupling needs likelihood=discretized_logistic"):
        TrainConfig(channel_coupling=True).validated()
