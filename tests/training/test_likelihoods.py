"""The discretized logistic against hand computations: bins, edges, normalisation, bits/dim."""

import math

import numpy as np
import pytest
import torch

from training.likelihoods import (
    MIN_LOG_SCALE,
    bits_per_dim,
    discretized_logistic_log_prob,
    discretized_logistic_nll,
    mean_image,
    param_channels,
    split_params,
)

pytestmark = pytest.mark.timeout(30)


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def params_for(mean: float, scale: float, shape=(1, 1, 4, 4)) -> torch.Tensor:
    """Decoder output (B, K(1+2C), H, W), K = 1, whose sigmoid mean and log-scale are the given constants."""
    logit = math.log(mean / (1 - mean))
    b, c, h, w = shape
    return torch.cat(
        [
            torch.zeros((b, 1, h, w)),
            torch.full((b, c, h, w), logit),
            torch.full((b, c, h, w), math.log(scale)),
        ],
        dim=1,
    ).double()


def test_constant_image_bits_per_dim_by_hand():
    # Every pixel is 128/255 and the logistic sits on it with scale 0.01: P = sig(h/s) - sig(-h/s), h = 1/510.
    x = torch.full((1, 1, 4, 4), 128 / 255, dtype=torch.float64)
    nll = discretized_logistic_nll(params_for(128 / 255, 0.01), x)
    p = sigmoid((1 / 510) / 0.01) - sigmoid(-(1 / 510) / 0.01)  # 0.10066...
    assert nll.shape == (1,)
    assert float(nll[0]) == pytest.approx(-16 * math.log(p), rel=1e-6)
    assert bits_per_dim(float(nll[0]), 16) == pytest.approx(-math.log2(p), rel=1e-6)  # 3.3125 bits


def test_edge_bins_extend_to_infinity():
    mean, s = 0.3, 0.1
    lo = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    hi = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    m, ls = torch.full_like(lo, mean), torch.full_like(lo, math.log(s))
    assert float(discretized_logistic_log_prob(lo, m, ls)) == pytest.approx(
        math.log(sigmoid((1 / 510 - mean) / s)), rel=1e-12
    )
    assert float(discretized_logistic_log_prob(hi, m, ls)) == pytest.approx(
        math.log(1 - sigmoid((1 - 1 / 510 - mean) / s)), rel=1e-12
    )


@pytest.mark.parametrize(("mean", "scale"), [(0.5, 0.2), (0.02, 0.01), (0.97, 0.003), (0.4, math.exp(-8))])
def test_the_256_values_sum_to_one(mean, scale):
    x = (torch.arange(256, dtype=torch.float64) / 255).view(1, 1, 1, 256)
    m, ls = torch.full_like(x, mean), torch.full_like(x, math.log(scale))
    total = float(torch.exp(discretized_logistic_log_prob(x, m, ls)).sum())
    assert total == pytest.approx(1.0, abs=1e-6)


def test_far_tail_uses_the_density_and_stays_finite():
    # 200 levels from the mean at s = 0.001: the sigmoid difference underflows; density * bin width is exact
    # to first order there.
    x = torch.full((1, 1, 1, 1), 220 / 255, dtype=torch.float64)
    mean, s = 20 / 255, 0.001
    got = float(discretized_logistic_log_prob(x, torch.full_like(x, mean), torch.full_like(x, math.log(s))))
    t = (220 / 255 - mean) / s
    by_hand = -t - math.log(s) - 2 * math.log1p(math.exp(-t)) - math.log(255)
    assert math.isfinite(got)
    assert got == pytest.approx(by_hand, rel=1e-9)


def test_split_params_clamps_the_log_scale_and_bounds_the_mean():
    k, c = 2, 3
    params = torch.cat(
        [torch.zeros(2, k, 2, 2), torch.full((2, k * c, 2, 2), 50.0), torch.full((2, k * c, 2, 2), -30.0)], 1
    )
    assert params.shape[1] == param_channels(c, k) == 14
    log_pi, mean, log_scale = split_params(params, c)
    assert log_pi.shape == (2, k, 1, 2, 2) and torch.allclose(log_pi.exp(), torch.full_like(log_pi, 0.5))
    assert mean.shape == log_scale.shape == (2, k, c, 2, 2)
    assert float(mean.max()) <= 1.0
    assert float(log_scale.min()) == MIN_LOG_SCALE
    with pytest.raises(ValueError, match="do not split"):
        split_params(params[:, :13], c)


def test_two_component_rgb_mixture_by_hand():
    # One RGB pixel (255, 0, 128) under pi = (0.25, 0.75): component 0 at (0.9, 0.1, 0.5) with s = 0.05,
    # component 1 at (0.2, 0.3, 0.4) with s = 0.2; the channels share the component.
    x = torch.tensor([255.0, 0.0, 128.0], dtype=torch.float64).view(1, 3, 1, 1) / 255
    pi = np.array([0.25, 0.75])
    mu = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.4]])
    s = np.array([0.05, 0.2])
    h = 1 / 510

    def p(value, m, scale):
        if value == 0:
            return sigmoid((h - m) / scale)
        if value == 1:
            return 1 - sigmoid((1 - h - m) / scale)
        return sigmoid((value + h - m) / scale) - sigmoid((value - h - m) / scale)

    values = [1.0, 0.0, 128 / 255]
    by_hand = sum(pi[k] * np.prod([p(values[c], mu[k, c], s[k]) for c in range(3)]) for k in range(2))
    params = torch.cat(
        [
            torch.log(torch.tensor(pi)).view(1, 2, 1, 1),
            torch.logit(torch.tensor(mu).reshape(1, 6, 1, 1)),
            torch.log(torch.tensor(s)).repeat_interleave(3).view(1, 6, 1, 1),
        ],
        dim=1,
    )
    nll = discretized_logistic_nll(params, x)
    assert float(nll[0]) == pytest.approx(-math.log(by_hand), rel=1e-9)
    assert bits_per_dim(float(nll[0]), 3) == pytest.approx(-math.log2(by_hand) / 3, rel=1e-9)
    expected_mean = (pi[:, None] * mu).sum(0)
    assert np.allclose(mean_image(params, 3).numpy().ravel(), expected_mean)


def test_reconstruction_nll_dispatches_to_the_likelihood():
    from training.losses import reconstruction_nll

    x = torch.full((1, 1, 4, 4), 128 / 255, dtype=torch.float64)
    params = params_for(128 / 255, 0.01)
    assert torch.allclose(
        reconstruction_nll(params, x, "discretized_logistic"), discretized_logistic_nll(params, x)
    )
