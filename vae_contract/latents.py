"""Latent-space geometry shared by training plots and the service: interpolation and the 2-D manifold grid.

Numpy only, so both halves use the same definitions.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

# Kingma and Welling (2014), fig. 4: a linearly spaced grid on the unit square mapped through the inverse
# Gaussian CDF, so grid cells cover equal prior mass. The open interval avoids the infinite quantiles 0 and 1.
MANIFOLD_EDGE = 0.05


def manifold_latents(size: int, edge: float = MANIFOLD_EDGE) -> np.ndarray:
    """(size*size, 2) latents, row-major; rows go from high to low z2 so the picture reads like a plot."""
    quantiles = np.linspace(edge, 1 - edge, size)
    normal = NormalDist()
    values = np.array([normal.inv_cdf(float(q)) for q in quantiles], dtype=np.float32)
    values[np.abs(values) < 1e-6] = 0.0  # the centre of an odd grid is exactly the prior mean, not -1e-16
    z1, z2 = np.meshgrid(values, values[::-1])
    return np.stack([z1.ravel(), z2.ravel()], axis=1)


def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """(steps, D) points on the straight line from a to b, endpoints included."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    return ((1 - t) * a + t * b).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """(steps, D) spherical interpolation (Shoemake; White 2016 for generative models), endpoints exact.

    Keeps intermediate points at a typical distance from the origin, where a Gaussian prior puts its mass,
    instead of cutting through the low-norm centre as lerp does. Falls back to lerp for (anti)parallel ends.
    """
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 or nb == 0:
        return lerp(a, b, steps)
    cos = float(np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0))
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return lerp(a, b, steps)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    out = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    out[0], out[-1] = a64, b64
    return out.astype(np.float32)
