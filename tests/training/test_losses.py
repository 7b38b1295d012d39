"""The objective against closed forms, Monte Carlo estimates and hand computations."""

import math

import pytest
import torch
from torch import nn

from training.config import TrainConfig
from training.gaussians import kl_divergence
from training.losses import (
    elbo_terms,
    iwae_bound,
    log_importance_weights,
    reconstruction_nll,
    training_loss,
)
from training.models import build_model


def test_kl_closed_form_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.2, -1.5, 0.7]], dtype=torch.float64)
    z = mean + torch.exp(0.5 * log_var) * torch.randn((400_000, 3), generator=gen, dtype=torch.float64)
    log_q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    monte_carlo = float((log_q - log_p).mean())
    assert float(kl_divergence(mean, log_var)[0]) == pytest.approx(monte_carlo, abs=0.01)


def test_kl_hand_values():
    # KL(N(0,1)||N(0,1)) = 0; KL(N(m,1)||N(0,1)) = m^2 / 2; KL(N(0, e^v)||N(0,1)) = (e^v - 1 - v) / 2.
    assert kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    assert kl_divergence(torch.tensor([[3.0]]), torch.zeros(1, 1)).item() == pytest.approx(4.5)
    assert kl_divergence(torch.zeros(1, 1), torch.tensor([[1.0]])).item() == pytest.approx((math.e - 2) / 2)


def test_bernoulli_and_gaussian_reconstruction_hand_values():
    x = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0, math.log(3.0)]])  # p = 1/2, 1/2, 1/2, 3/4
    expected = 3 * math.log(2) + math.log(4 / 3)  # -log p(x) summed; x=0.5 with p=1/2 also costs log 2
    assert reconstruction_nll(logits, x, "bernoulli").item() == pytest.approx(expected, rel=1e-6)
    sigma = 0.5
    mean = torch.sigmoid(logits)
    sq = float(((x - mean) ** 2).sum())
    gauss = sq / (2 * sigma**2) + 4 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert reconstruction_nll(logits, x, "gaussian", sigma).item() == pytest.approx(gauss, rel=1e-6)


class _ConstantDecoderVAE(nn.Module):
    """A VAE whose encoder returns the prior and whose decoder ignores z: every term has a closed form."""

    def __init__(self, config, pixels=4, logit=0.0):
        super().__init__()
        self.config = config
        self.pixels = pixels
        self.logit = logit
        self.latent_dim = 2
        self.prior = None
        self.pixel_decoder = None  # a factorised decoder

    def encode(self, x):
        zeros = torch.zeros(x.shape[0], self.latent_dim)
        return zeros, zeros

    def decode_logits(self, z, x=None):
        return torch.full((z.shape[0], 1, 1, self.pixels), self.logit)

    def forward(self, x, generator=None):
        mean, log_var = self.encode(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=generator)
        return self.decode_logits(z), mean, log_var, z


def test_elbo_hand_computation_and_iwae_exact_when_posterior_is_prior():
    model = _ConstantDecoderVAE(TrainConfig(), pixels=4, logit=0.0)
    x = torch.tensor([[[[1.0, 0.0, 1.0, 1.0]]]])
    terms = elbo_terms(model, x)
    # q = p(z) so KL = 0; every pixel has p = 1/2, so -ELBO = 4 log 2, which is also exactly -log p(x).
    assert terms["kl"].item() == 0.0
    assert terms["neg_elbo"].item() == pytest.approx(4 * math.log(2), rel=1e-6)
    for k in (1, 10, 1000):
        assert iwae_bound(model, x, k, chunk=64).item() == pytest.approx(-4 * math.log(2), rel=1e-6)


def test_log_importance_weight_by_hand():
    config = TrainConfig(latent_dim=1, hidden_dims=(3,))
    model = build_model(config, (1, 2, 2))
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    mean, log_var = torch.tensor([[0.3]]), torch.tensor([[-0.4]])
    gen = torch.Generator().manual_seed(5)
    log_w = log_importance_weights(model, x, mean, log_var, 1, gen)
    eps = torch.randn((1, 1, 1), generator=torch.Generator().manual_seed(5))
    z = 0.3 + math.exp(-0.2) * eps.item()
    log_px = -reconstruction_nll(model.decode_logits(torch.tensor([[z]])), x, "bernoulli").item()
    log_pz = -0.5 * (math.log(2 * math.pi) + z**2)
    log_qz = -0.5 * (math.log(2 * math.pi) - 0.4 + (z - 0.3) ** 2 / math.exp(-0.4))
    assert log_w.item() == pytest.approx(log_px + log_pz - log_qz, rel=1e-5)


def test_iwae_bound_at_least_elbo_and_tightens_with_k(mnist_digits, trained_small):
    model = trained_small.model.eval()
    x = torch.from_numpy(mnist_digits[0][:50])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        # The ELBO is E[log w]; average many single-sample estimates so noise cannot flip the comparison.
        elbo = float(torch.stack([-elbo_terms(model, x, gen)["neg_elbo"] for _ in range(200)]).mean())
        bounds = [float(iwae_bound(model, x, k, chunk=50, generator=gen).mean()) for k in (1, 10, 100, 1000)]
    assert bounds[0] == pytest.approx(elbo, abs=2.0)
    assert elbo < bounds[1] < bounds[2] < bounds[3]


def test_iwae_chunking_and_seed_determinism(mnist_digits):
    torch.manual_seed(0)
    model = build_model(TrainConfig(latent_dim=3, hidden_dims=(16,)), (1, 28, 28)).eval()
    x = torch.from_numpy(mnist_digits[0][:5])
    with torch.no_grad():
        a = iwae_bound(model, x, 300, chunk=300, generator=torch.Generator().manual_seed(9))
        b = iwae_bound(model, x, 300, chunk=300, generator=torch.Generator().manual_seed(9))
        c = iwae_bound(model, x, 300, chunk=7, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert c.shape == a.shape and torch.all(torch.isfinite(c))
    torch.testing.assert_close(a, c, rtol=0, atol=1.0)  # different draws, same quantity


def test_iwae_objective_equals_hand_logmeanexp(mnist_digits):
    config = TrainConfig(latent_dim=3, hidden_dims=(16,), objective="iwae", train_k=5)
    torch.manual_seed(0)
    model = build_model(config, (1, 28, 28))
    x = torch.from_numpy(mnist_digits[0][:4])
    loss, _ = training_loss(model, x, beta=1.0, generator=torch.Generator().manual_seed(2))
    mean, log_var = model.encode(x)
    log_w = log_importance_weights(model, x, mean, log_var, 5, torch.Generator().manual_seed(2)).detach()
    hand = (
        -torch.log(torch.exp(log_w.double() - log_w.double().max(0).values).mean(0))
        - log_w.double().max(0).values
    )
    assert loss.detach().item() == pytest.approx(float(hand.mean()), rel=1e-5)


def test_beta_weights_only_the_kl(mnist_digits):
    torch.manual_seed(0)
    model = build_model(TrainConfig(latent_dim=3, hidden_dims=(16,)), (1, 28, 28))
    x = torch.from_numpy(mnist_digits[0][:4])
    loss0, terms = training_loss(model, x, beta=0.0, generator=torch.Generator().manual_seed(1))
    loss2, _ = training_loss(model, x, beta=2.0, generator=torch.Generator().manual_seed(1))
    assert loss0.detach().item() == pytest.approx(float(terms["reconstruction"].mean()), rel=1e-6)
    assert loss2.detach().item() == pytest.approx(
        float((terms["reconstruction"] + 2 * terms["kl"]).mean()), rel=1e-6
    )


class _FixedPosteriorVAE(_ConstantDecoderVAE):
    """Its encoder returns learnable means for two images and two units, so each unit's KL is m^2 / 2."""

    def __init__(self, config, means):
        super().__init__(config)
        self.means = nn.Parameter(torch.tensor(means))

    def encode(self, x):
        return self.means, torch.zeros_like(self.means)


def test_free_bits_floor_each_units_batch_mean_kl_and_stop_its_gradient():
    # Unit 0: means 0.2 and 0.4, batch-mean KL (0.02 + 0.08) / 2 = 0.05, under the 0.5 floor;
    # unit 1: means 2 and 0, batch-mean KL (2 + 0) / 2 = 1.0, above it.
    config = TrainConfig(free_bits=0.5)
    model = _FixedPosteriorVAE(config, [[0.2, 2.0], [0.4, 0.0]])
    x = torch.tensor([[[[1.0, 0.0, 1.0, 1.0]]], [[[0.0, 0.0, 1.0, 0.0]]]])
    loss, terms = training_loss(model, x, beta=1.0, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(4 * math.log(2) + 0.5 + 1.0, rel=1e-6)
    # The logged KL is the true one, image by image: (0.02 + 2) and (0.08 + 0).
    assert terms["kl"].tolist() == pytest.approx([2.02, 0.08], rel=1e-5)
    loss.backward()
    # d/dm of the batch-mean m^2/2 is m / 2: nothing for the unit under the floor.
    assert model.means.grad.flatten().tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=1e-6)
    without = TrainConfig()
    plain = _FixedPosteriorVAE(without, [[0.2, 2.0], [0.4, 0.0]])
    plain_loss, _ = training_loss(plain, x, beta=1.0, generator=torch.Generator().manual_seed(0))
    assert plain_loss.item() == pytest.approx(4 * math.log(2) + 1.05, rel=1e-6)


def test_free_bits_need_the_elbo_with_a_standard_prior():
    with pytest.raises(ValueError, match="free_bits needs objective=elbo and prior=standard"):
        TrainConfig(free_bits=0.5, objective="iwae", train_k=5).validated()
    with pytest.raises(ValueError, match="free_bits needs"):
        TrainConfig(free_bits=0.5, prior="vamp").validated()
    with pytest.raises(ValueError, match="free_bits must be >= 0"):
        TrainConfig(free_bits=-1.0).validated()
