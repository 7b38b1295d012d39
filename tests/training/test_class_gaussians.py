"""Per-class Gaussians of the aggregate posterior: moments by hand, seeded sampling, the side file."""

import hashlib

import numpy as np
import pytest
import torch

from training.class_gaussians import fit_class_gaussians
from training.config import TrainConfig
from training.models import build_model
from vae_contract.classes import read_class_gaussians, write_class_gaussians

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fitted():
    torch.manual_seed(0)
    model = build_model(TrainConfig(latent_dim=3, hidden_dims=(16,)), (1, 6, 6)).eval()
    x = torch.rand(40, 1, 6, 6)
    labels = np.array([0] * 25 + [2] * 15)
    return model, x, labels, fit_class_gaussians(model, x, labels, ["zero", "one", "two"], batch_size=16)


def test_moments_match_the_aggregate_posterior(fitted):
    model, x, labels, g = fitted
    with torch.no_grad():
        mu, log_var = (t.double().numpy() for t in model.encode(x))
    rows = labels == 2
    cov = np.cov(mu[rows], rowvar=False, bias=True) + np.diag(np.exp(log_var[rows]).mean(0))
    assert np.allclose(g.mean[2], mu[rows].mean(0), atol=1e-6)
    assert np.allclose(g.cholesky[2] @ g.cholesky[2].T, cov, atol=1e-5)
    assert g.counts.tolist() == [25, 0, 15]
    assert np.array_equal(g.cholesky[1], np.eye(3))  # no training image: the prior


def test_sampling_is_seeded(fitted):
    *_, g = fitted
    a, b = g.draw(0, 5, seed=7), g.draw(0, 5, seed=7)
    assert a.dtype == np.float32 and a.shape == (5, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, g.draw(0, 5, seed=8))
    eps = np.random.default_rng(7).standard_normal((5, 3), dtype=np.float32)
    assert np.allclose(g.draw(2, 5, seed=7, temperature=0.5), g.mean[2] + 0.5 * eps @ g.cholesky[2].T)


def test_side_file_round_trip(fitted, tmp_path):
    *_, g = fitted
    path, digest = write_class_gaussians(g, tmp_path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    back = read_class_gaussians(path, ["zero", "one", "two"], 3)
    assert back.names == ("zero", "one", "two")
    assert np.array_equal(back.mean, g.mean) and np.array_equal(back.cholesky, g.cholesky)
