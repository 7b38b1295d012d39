"""Test-set evaluation: ELBO and its two terms, the IWAE log-likelihood bound, active units, and
reconstruction error.

Deterministic under `seed`: the posterior samples come from a private generator, so two evaluations of the
same model on the same data report the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from training.data import iterate_batches
from training.losses import elbo_terms, iwae_bound
from training.models import VAE

# Burda et al. (2016), section 5.2: a latent unit is active when Cov_x(E_q[z_u | x]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def evaluate(
    model: VAE,
    x: torch.Tensor,
    batch_size: int = 500,
    iwae_k: int = 0,
    iwae_chunk: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Averages per image over `x` (float, already binarized if the protocol says so), in nats."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    totals = {"neg_elbo": 0.0, "reconstruction": 0.0, "kl": 0.0, "mse": 0.0, "iwae": 0.0}
    means = []
    # IWAE batches shrink so that batch * chunk decoded images stay around 50k at a time.
    iwae_batch = max(1, min(batch_size, 50_000 // max(1, min(iwae_k, iwae_chunk))))
    for batch in iterate_batches(x, batch_size, shuffle=False):
        terms = elbo_terms(model, batch, generator)
        for key in ("neg_elbo", "reconstruction", "kl"):
            totals[key] += float(terms[key].sum())
        mean, _ = model.encode(batch)
        means.append(mean)
        totals["mse"] += float((model.decode(mean) - batch).pow(2).flatten(1).mean(1).sum())
        if iwae_k > 0:
            for sub in iterate_batches(batch, iwae_batch, shuffle=False):
                totals["iwae"] += float(iwae_bound(model, sub, iwae_k, iwae_chunk, generator).sum())
    n = x.shape[0]
    all_means = torch.cat(means)
    activity = all_means.var(dim=0, unbiased=False) if n > 1 else torch.zeros_like(all_means[0])
    model.train(was_training)
    result: dict[str, Any] = {
        "examples": n,
        "neg_elbo": totals["neg_elbo"] / n,
        "reconstruction": totals["reconstruction"] / n,
        "kl": totals["kl"] / n,
        "mse_per_pixel": totals["mse"] / n,
        "active_units": int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
    }
    if iwae_k > 0:
        result["iwae_nll"] = -totals["iwae"] / n
        result["iwae_k"] = iwae_k
    return {
        key: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for key, v in result.items()
    }
