"""Priors p(z): the standard normal of Kingma and Welling (2014) and the VampPrior (Tomczak and Welling 2018).

The VampPrior ("VAE with a VampPrior", AISTATS 2018, eq. 9) is a uniform mixture of the encoder's own
posteriors at K learned pseudo-inputs u_k: p(z) = 1/K sum_k q(z | u_k). Its components move with the encoder,
so the prior follows the aggregate posterior instead of pulling every q(z|x) towards N(0, I). With it the KL
term of the ELBO has no closed form: it is estimated with the posterior sample, log q(z|x) - log p(z).

At export time the components are computed once (the encoder at the pseudo-inputs) and shipped as a diagonal
Gaussian mixture, so the service never needs the pseudo-inputs (see `vae_contract/priors.py`). The mixture's
parameters are `VAE.prior_components`; its density is `training/gaussians.py`'s `mixture_log_density`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Tomczak and Welling's code initialises the pseudo-inputs around 0.05 with std 0.01 (MNIST pixels in [0, 1]).
PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = 0.05, 0.01


class VampPrior(nn.Module):
    """K learned pseudo-inputs (K, C, H, W), kept in the pixel range [0, 1] by a hard tanh as in the paper."""

    def __init__(self, components: int, image_shape: tuple[int, int, int]):
        super().__init__()
        init = torch.randn(components, *image_shape) * PSEUDO_INPUT_STD + PSEUDO_INPUT_MEAN
        self.pseudo_inputs = nn.Parameter(init)

    @property
    def components(self) -> int:
        return int(self.pseudo_inputs.shape[0])

    def inputs(self) -> torch.Tensor:
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0)  # (K, C, H, W)


class FixedMixture(nn.Module):
    """A prior given as a diagonal Gaussian mixture, not learned: what the service samples from a version's
    prior file, so that training's evaluation measures a model under the prior it is served with (the
    aggregate posterior of training/aggregate_prior.py)."""

    means: torch.Tensor  # (K, D)
    log_vars: torch.Tensor  # (K, D)
    log_weights: torch.Tensor  # (K,)

    def __init__(self, means: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means.float())
        self.register_buffer("log_vars", log_vars.float())
        self.register_buffer("log_weights", torch.log(weights.double() / weights.double().sum()).float())

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.means, self.log_vars, self.log_weights
