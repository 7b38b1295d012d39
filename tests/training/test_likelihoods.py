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
    split_params,
)

pytestmark = pytest.mark.timeout(30)


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def params_for(mean: float, scale: float, shape=(1, 1, 4, 4)) -> torch.Tensor:
    """Decoder output (B, 2C, H, W) whose sigmoid mean and log-scale are the given constants."""
    logit = math.log(mean / (1 - mean))
    b, c, h, w = shape
    return torch.cat(
        [torch.full((b, c, h, w), logit), torch.full((b, c, h, w), math.log(scale))], dim=1
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
    params = torch.cat([torch.full((2, 3, 2, 2), 50.0), torch.full((2, 3, 2, 2), -30.0)], dim=1)
    mean, log_scale = split_params(params, 3)
    assert mean.shape == log_scale.shape == (2, 3, 2, 2)
    assert float(mean.max()) <= 1.0
    assert float(log_scale.min()) == MIN_LOG_SCALE


def test_reconstruction_nll_dispatches_to_the_likelihood():
    from training.losses import reconstruction_nll

    x = torch.full((1, 1, 4, 4), 128 / 255, dtype=torch.float64)
    params = params_for(128 / 255, 0.01)
    assert torch.allclose(
        reconstruction_nll(params, x, "discretized_logistic"), discretized_logistic_nll(params, x)
    )
