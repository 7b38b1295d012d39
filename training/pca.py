"""The PCA baseline of the lecture: a linear encoder/decoder found in closed form (an SVD).

Sign convention: the SVD fixes each principal axis only up to sign, so we orient every axis so that its
largest-magnitude coordinate is positive. With it, the lecture's five points A..E encode to
-0.63, -0.39, 0.09, 0.41, 0.53 along the first axis, exactly as its table prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PCA:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D), orthonormal rows, largest variance first

    def encode(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T  # (N, K)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) @ self.components + self.mean  # (N, D)

    def reconstruction_error(self, x: np.ndarray) -> float:
        """Mean squared error per coordinate of decode(encode(x))."""
        return float(np.mean((self.decode(self.encode(x)) - x) ** 2))


def fit_pca(x: np.ndarray, k: int) -> PCA:
    data = np.asarray(x, dtype=np.float64)
    mean = data.mean(axis=0)
    _, _, vt = np.linalg.svd(data - mean, full_matrices=False)
    components = vt[:k].copy()
    for row in components:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    return PCA(mean=mean, components=components)
