"""A prior other than N(0, I), as the manifest declares it: a diagonal Gaussian mixture in a hashed .npy file.

The file is one float32 array of shape (K, 2 D + 1); row k is [mean_k (D), log_var_k (D), weight_k (1)]. A
VampPrior (Tomczak and Welling 2018) is exported this way: the encoder's posteriors at its K pseudo-inputs,
uniform weights. Both halves use this module: training writes the file (`write_mixture`), the service reads
it (`read_mixture`), samples from it and scores with it. No torch here.

Sampling (`MixturePrior.draw`), with numpy's PCG64 Generator seeded by the request's seed:
    rng = np.random.default_rng(seed)
    k = rng.choice(K, size=n, p=weights)                     # a component per draw
    eps = rng.standard_normal((n, D), dtype=np.float32)
    z = means[k] + temperature * exp(log_vars[k] / 2) * eps
Temperature scales each component's spread (temperature 0 returns the component means).

KL for the reconstruct score (`MixturePrior.kl_bound`): KL(q || sum_k w_k p_k) has no closed form. The score
uses the deterministic upper bound KL <= -log sum_k w_k exp(-KL(q || p_k)), each KL(q || p_k) between
diagonal Gaussians in closed form. It follows from Jensen's inequality for the convex log-sum-exp,
E_q log sum_k w_k p_k(z) >= log sum_k w_k exp(E_q log p_k(z)) (the "variational" approximation of Hershey
and Olsen 2007, an upper bound when q has one component); it is exact for one component, so N(0, I) scored
as a one-component mixture gives the closed-form KL, and it is tighter than sum_k w_k KL(q || p_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

PRIOR_FILE = "prior.npy"
MIXTURE_KIND: Literal["mixture_of_gaussians"] = "mixture_of_gaussians"
# The known kinds of the manifest's `prior.kind`; absent `prior` means N(0, I).
PRIOR_KINDS = (MIXTURE_KIND,)
# Bounds that keep the file small and one request's KL bound cheap (images x K values per request).
MAX_COMPONENTS = 4096
MAX_PRIOR_VALUES = 1 << 22  # K * (2 D + 1) float32: 16 MiB
# Beyond these a log-variance is not a trained posterior's: exp() would overflow or vanish in float32.
LOG_VAR_RANGE = (-30.0, 30.0)


class PriorFileError(ValueError):
    """A prior parameter file that disagrees with its manifest; the message says what."""


@dataclass(frozen=True)
class MixturePrior:
    means: np.ndarray  # (K, D) float32
    log_vars: np.ndarray  # (K, D) float32
    weights: np.ndarray  # (K,) float64, sums to 1

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def draw(self, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
        """(n, D) float32 draws, seeded: a component with the RNG, then a Gaussian draw from it."""
        rng = np.random.default_rng(seed)
        k = rng.choice(self.components, size=n, p=self.weights)
        eps = rng.standard_normal((n, self.means.shape[1]), dtype=np.float32)
        std = np.exp(np.float32(0.5) * self.log_vars[k]) * np.float32(temperature)
        return (self.means[k] + std * eps).astype(np.float32)

    @cached_property
    def _terms(self) -> _Terms:
        """What the density and the KLs need of the components alone, computed once per loaded prior."""
        mk, lvk = self.means.astype(np.float64), self.log_vars.astype(np.float64)
        inv = np.exp(-lvk)  # (K, D)
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights)  # a zero weight is -inf: that component drops out
        return _Terms(
            inv_t=np.ascontiguousarray(inv.T),
            scaled_means_t=np.ascontiguousarray((mk * inv).T),
            squared_means=(mk**2 * inv).sum(axis=1),
            log_var_sums=lvk.sum(axis=1),
            log_weights=log_w,
        )

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """(...) log sum_k w_k N(z; means_k, diag exp(log_vars_k)) for z (..., D), float64."""
        flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
        t = self._terms
        squared = (flat**2) @ t.inv_t - 2 * flat @ t.scaled_means_t + t.squared_means  # (N, K)
        per = t.log_weights - 0.5 * (
            z.shape[-1] * math.log(2 * math.pi) + t.log_var_sums + np.maximum(squared, 0)
        )
        top = per.max(axis=1, keepdims=True)
        return (top[:, 0] + np.log(np.exp(per - top).sum(axis=1))).reshape(z.shape[:-1])

    def component_kls(self, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
        """(N, K) KL(N(mean, exp(log_var)) || N(means_k, exp(log_vars_k))) in closed form, float64.

        Per component, 1/2 sum_d [lv_k - lv + (exp(lv) + (m - m_k)^2) / v_k - 1], expanded so that the terms
        that mix image and component are two matrix products, (exp(lv) + m^2) @ (1/v)^T and m @ (m_k/v_k)^T:
        (N, K) memory and BLAS speed instead of an (N, K, D) temporary (4,096 components: ~100x faster). In
        float64 the expansion's rounding is far below a nat for trained posteriors; a KL is never below 0."""
        m, lv = mean.astype(np.float64), log_var.astype(np.float64)
        t = self._terms
        per_image = lv.sum(axis=1) + m.shape[1]  # (N,)
        mixed = (np.exp(lv) + m**2) @ t.inv_t - 2 * m @ t.scaled_means_t  # (N, K)
        per_component = t.log_var_sums + t.squared_means  # (K,)
        return np.maximum(0.5 * (per_component[None, :] - per_image[:, None] + mixed), 0.0)

    def kl_bound(self, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
        """(N,) the upper bound -log sum_k w_k exp(-KL(q || p_k)) on KL(q || prior), float64."""
        scaled = self._terms.log_weights - self.component_kls(mean, log_var)  # (N, K)
        top = scaled.max(axis=1, keepdims=True)
        return -(top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


@dataclass(frozen=True)
class _Terms:
    """A mixture's per-component constants, float64: 1/v and m/v transposed for the matrix products (D, K),
    sum_d m^2/v, sum_d log v and log w (K,)."""

    inv_t: np.ndarray
    scaled_means_t: np.ndarray
    squared_means: np.ndarray
    log_var_sums: np.ndarray
    log_weights: np.ndarray


def pack(means: np.ndarray, log_vars: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The file's (K, 2 D + 1) float32 layout."""
    return np.concatenate([means, log_vars, weights[:, None]], axis=1).astype(np.float32)


def write_mixture(path: Path, means: np.ndarray, log_vars: np.ndarray, weights: np.ndarray) -> None:
    np.save(Path(path), pack(means, log_vars, weights), allow_pickle=False)


def read_mixture(path: Path, components: int, latent_dim: int) -> MixturePrior:
    """Read and check a prior file against the manifest's component count and latent size."""
    path = Path(path)
    expected = (components, 2 * latent_dim + 1)
    if math.prod(expected) > MAX_PRIOR_VALUES:
        raise PriorFileError(f"{path}: a prior of {expected} values is over the {MAX_PRIOR_VALUES} limit")
    # The header is small; a file much larger than its data is not one we wrote.
    if path.stat().st_size > 4 * math.prod(expected) + 4096:
        raise PriorFileError(f"{path}: larger than a float32 array of shape {expected}")
    try:
        raw = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PriorFileError(f"{path}: not a .npy array ({exc})") from exc
    if not isinstance(raw, np.ndarray) or raw.dtype != np.float32 or raw.shape != expected:
        got = f"{getattr(raw, 'dtype', type(raw).__name__)} {getattr(raw, 'shape', '')}"
        raise PriorFileError(f"{path}: expected float32 {expected} (K, 2 latent_dim + 1), found {got}")
    if not np.isfinite(raw).all():
        raise PriorFileError(f"{path}: non-finite prior parameters")
    d = latent_dim
    means, log_vars, weights = raw[:, :d], raw[:, d : 2 * d], raw[:, 2 * d].astype(np.float64)
    low, high = LOG_VAR_RANGE
    if log_vars.min() < low or log_vars.max() > high:
        raise PriorFileError(f"{path}: log-variances outside [{low:g}, {high:g}]")
    if weights.min() < 0 or abs(weights.sum() - 1) > 1e-4:
        raise PriorFileError(f"{path}: mixture weights must be >= 0 and sum to 1 (sum {weights.sum():.6g})")
    mixture = MixturePrior(
        np.ascontiguousarray(means), np.ascontiguousarray(log_vars), weights / weights.sum()
    )
    _ = mixture._terms  # computed here, at load, rather than by the first request that scores
    return mixture
