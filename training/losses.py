"""The VAE objective: negative ELBO = reconstruction + KL, and the importance-weighted bound.

All functions return one value per image (shape (B,)), in nats, summed over pixels and latent units as in
Kingma and Welling (2014), appendix B; callers average over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.gaussians import (
    gaussian_log_density,
    kl_divergence,
    kl_per_unit,
    mixture_log_density,
    standard_normal_log_density,
)
from training.likelihoods import discretized_logistic_nll
from training.models import VAE
from vae_contract.likelihoods import LOG_2PI


def reconstruction_nll(
    logits: torch.Tensor,
    x: torch.Tensor,
    likelihood: str,
    gaussian_sigma: float = 0.1,
    channel_coupling: bool = False,
) -> torch.Tensor:
    """-log p(x|z) per image.

    bernoulli: binary cross-entropy on the decoder logits (numerically stable form). For non-binary x in [0,1]
    this is the usual "continuous BCE" of pytorch/examples, not a normalised density.
    gaussian: N(x; sigmoid(logits), sigma^2 I), i.e.
    sum (x - mean)^2 / (2 sigma^2) + D (log sigma + log(2 pi) / 2).
    discretized_logistic: a normalised distribution over the 256 values of 8-bit pixels (see likelihoods.py),
    with PixelCNN++'s channel coupling where the decoder emits that layout.
    """
    flat_logits, flat_x = logits.flatten(1), x.flatten(1)
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(flat_logits, flat_x, reduction="none").sum(dim=1)
    if likelihood == "gaussian":
        mean = torch.sigmoid(flat_logits)
        dims = flat_x.shape[1]
        squared = (flat_x - mean).pow(2).sum(dim=1)
        return squared / (2 * gaussian_sigma**2) + dims * (math.log(gaussian_sigma) + 0.5 * LOG_2PI)
    if likelihood == "discretized_logistic":
        return discretized_logistic_nll(logits, x, channel_coupling)  # logits: the mixture's parameter maps
    raise ValueError(f"unknown likelihood {likelihood!r}")


def model_nll(model: VAE, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image under the model's own likelihood (the pixel-group decoder's anchors included)."""
    cfg = model.config
    if model.pixel_decoder is not None:
        return model.pixel_decoder.nll(logits, x, cfg.channel_coupling)
    return reconstruction_nll(logits, x, cfg.likelihood, cfg.gaussian_sigma, cfg.channel_coupling)


def log_prior(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """log p(z) under the model's prior, summed over the last axis of z (..., D)."""
    if model.prior is None:
        return standard_normal_log_density(z)
    components = model.prior_components()
    assert components is not None  # a model with a prior has its components
    return mixture_log_density(z, *components)


def kl_estimate(model: VAE, mean: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B,) the ELBO's KL term: closed form against N(0, I) (Kingma and Welling 2014, appendix B), else the
    single-sample Monte-Carlo estimate log q(z|x) - log p(z) at the posterior sample z (Tomczak and Welling,
    eq. 4), which is unbiased and, summed with the reconstruction term, gives an unbiased -ELBO."""
    if model.prior is None:
        return kl_divergence(mean, log_var)
    return gaussian_log_density(z, mean, log_var) - log_prior(model, z)


def elbo_terms(
    model: VAE, x: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Per-image reconstruction and KL terms from one posterior sample; neg_elbo = reconstruction + kl. The
    posterior's mean and log_var come with them."""
    logits, mean, log_var, z = model(x, generator)
    cfg = model.config
    recon = model_nll(model, logits, x)
    # Closed form against N(0, I); log q(z|x) - log p(z) at the sample z under a learned prior.
    kl = kl_estimate(model, mean, log_var, z) if cfg.variational else torch.zeros_like(recon)
    return {"reconstruction": recon, "kl": kl, "neg_elbo": recon + kl, "mean": mean, "log_var": log_var}


def log_importance_weights(
    model: VAE,
    x: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for k samples z_i ~ q(z|x); shape (k, B)."""
    b, d = mean.shape
    eps = torch.randn((k, b, d), generator=generator, device=mean.device, dtype=mean.dtype)
    z = mean + torch.exp(0.5 * log_var) * eps  # (k, B, D)
    x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    logits = model.decode_logits(z.reshape(k * b, d), x_rep)  # (k*B, C, H, W)
    log_px_z = -model_nll(model, logits, x_rep).view(k, b)
    log_pz = log_prior(model, z)  # the model's own prior: N(0, I) or a learned mixture
    log_qz_x = -0.5 * torch.sum(LOG_2PI + log_var + eps.pow(2), dim=-1)  # (z - mean)^2 / var == eps^2
    return log_px_z + log_pz - log_qz_x


def iwae_bound(
    model: VAE,
    x: torch.Tensor,
    k: int,
    chunk: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log (1/k) sum_i w_i per image (Burda et al. 2016), a lower bound on log p(x) that tightens with k.

    Samples are drawn `chunk` at a time and combined with a running logsumexp, so memory does not grow with k
    (k = 5000 on a batch of MNIST digits fits in a few hundred MB).
    """
    mean, log_var = model.encode(x)
    total = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=mean.dtype)
    done = 0
    while done < k:
        step = min(chunk, k - done)
        log_w = log_importance_weights(model, x, mean, log_var, step, generator)
        total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
        done += step
    return total - math.log(k)


def training_loss(
    model: VAE, x: torch.Tensor, beta: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar to minimise (batch mean) and per-image terms for logging.

    elbo: reconstruction + beta * KL. iwae: -IWAE bound with train_k samples (beta is not used: the
    importance-weighted bound has no separate KL term to weight).
    """
    cfg = model.config
    if cfg.objective == "iwae":
        mean, log_var = model.encode(x)
        log_w = log_importance_weights(model, x, mean, log_var, cfg.train_k, generator)
        bound = torch.logsumexp(log_w, dim=0) - math.log(cfg.train_k)
        with torch.no_grad():
            if model.prior is None:
                kl = kl_divergence(mean, log_var)
            else:  # logged only: a one-sample estimate, as in the ELBO
                kl = kl_estimate(model, mean, log_var, model.reparameterize(mean, log_var, generator))
        terms = {
            "neg_elbo": -log_w.mean(0).detach(),
            "kl": kl,
            "reconstruction": -log_w.mean(0).detach() - kl,
        }
        return -bound.mean(), terms
    terms = elbo_terms(model, x, generator)
    kl_loss = terms["kl"].mean()
    if cfg.free_bits > 0:
        # Kingma et al. 2016, "free bits": each unit's batch-mean KL counts as at least the floor, so below it
        # the unit's KL has no gradient and nothing pushes the encoder to close it. Only the loss sees the
        # floor: the logged and evaluated KL stays the true one.
        per_unit = kl_per_unit(terms.pop("mean"), terms.pop("log_var"))
        kl_loss = torch.clamp(per_unit.mean(dim=0), min=cfg.free_bits).sum()
    loss = terms["reconstruction"].mean() + beta * kl_loss
    return loss, {key: terms[key].detach() for key in ("neg_elbo", "reconstruction", "kl")}
