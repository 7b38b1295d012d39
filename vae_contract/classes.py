"""Class-conditional sampling: the per-class Gaussians of the aggregate posterior that export ships.

The manifest's `conditional` section names a hashed `classes.npz` of plain arrays (`write_class_gaussians`
below, called by training's export after `training/class_gaussians.py` fits them): names (K,) str, counts
(K,) int, mean (K, D) float32 and cholesky (K, D, D) float32, the lower triangular factor L_c of class c's
covariance. The service reads it with allow_pickle=False, checks every array here, and draws, with numpy's
PCG64 Generator seeded by the request's seed,

    eps = np.random.default_rng(seed).standard_normal((n, D), dtype=np.float32)
    z = mean[c] + temperature * eps @ L_c^T

with `ClassGaussians.draw`, the one implementation both training's measurements and the service use.
No torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_contract.side_files import read_plain_arrays

CLASSES_FILE = "classes.npz"
# K * D * D float32 values of the Cholesky factors at most (64 MiB), and a bound on the number of classes.
MAX_CLASS_VALUES = 1 << 24
MAX_CLASSES = 4096
ARRAYS = ("names", "counts", "mean", "cholesky")


class ClassFileError(ValueError):
    """A class statistics file that disagrees with its manifest; the message says what."""


@dataclass(frozen=True)
class ClassGaussians:
    names: tuple[str, ...]  # (K,) class names, index = dataset label
    counts: np.ndarray  # (K,) training images per class
    mean: np.ndarray  # (K, D) float32
    cholesky: np.ndarray  # (K, D, D) float32, lower triangular

    def index(self, label: str) -> int | None:
        try:
            return self.names.index(label)
        except ValueError:
            return None

    def draw(self, label: int, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
        """(n, D) float32 draws from class `label`'s Gaussian: z = mean + t * eps @ L^T, eps ~ PCG64(seed)."""
        eps = np.random.default_rng(seed).standard_normal((n, self.mean.shape[1]), dtype=np.float32)
        draws = self.mean[label] + np.float32(temperature) * (eps @ self.cholesky[label].T)
        return draws.astype(np.float32)


def write_class_gaussians(gaussians: ClassGaussians, folder: Path) -> tuple[Path, str]:
    """Write `classes.npz` into folder; returns its path and the sha256 the manifest records."""
    path = Path(folder) / CLASSES_FILE
    with path.open("wb") as fh:
        np.savez(
            fh,
            names=np.asarray(gaussians.names),
            counts=gaussians.counts,
            mean=gaussians.mean,
            cholesky=gaussians.cholesky,
        )
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def read_class_gaussians(path: Path, classes: list[str], latent_dim: int) -> ClassGaussians:
    """Read and check a class statistics file against the manifest's class names and latent size."""
    path = Path(path)
    k, d = len(classes), latent_dim
    if k < 1 or k > MAX_CLASSES:
        raise ClassFileError(f"{path}: {k} classes; between 1 and {MAX_CLASSES} are served")
    if len(set(classes)) != k:
        raise ClassFileError(f"{path}: the manifest's class names are not unique")
    if k * d * d > MAX_CLASS_VALUES:
        raise ClassFileError(f"{path}: {k} classes of {d}x{d} factors are over the {MAX_CLASS_VALUES} limit")
    limit = 4 * (k * d * d + k * d) + 8 * k + 4 * k * 1024 + 64 * 1024
    arrays = read_plain_arrays(path, ARRAYS, limit, f"{k} classes of latent size {d}", ClassFileError)
    names, counts, mean, chol = (arrays[name] for name in ARRAYS)
    if names.dtype.kind != "U" or names.shape != (k,) or [str(n) for n in names] != list(classes):
        raise ClassFileError(f"{path}: its class names differ from the manifest's {classes}")
    if counts.dtype.kind not in "iu" or counts.shape != (k,) or (counts < 0).any():
        raise ClassFileError(f"{path}: counts must be {k} non-negative integers")
    for what, array, shape in (("mean", mean, (k, d)), ("cholesky", chol, (k, d, d))):
        if array.dtype != np.float32 or array.shape != shape:
            raise ClassFileError(
                f"{path}: expected {what} float32 {shape}, found {array.dtype} {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ClassFileError(f"{path}: non-finite values in {what}")
    if np.triu(chol, 1).any():
        raise ClassFileError(f"{path}: cholesky is not lower triangular")
    diagonal = np.diagonal(chol, axis1=1, axis2=2)
    if not (diagonal > 0).all():
        raise ClassFileError(f"{path}: cholesky has a non-positive diagonal (not a covariance's factor)")
    # A class spread far beyond any trained posterior's would decode to noise: refuse it at load.
    if float(np.abs(mean).max()) > 1e4 or float(np.abs(chol).max()) > 1e4:
        raise ClassFileError(f"{path}: class means or factors beyond 1e4")
    return ClassGaussians(
        tuple(classes), counts.astype(np.int64), np.ascontiguousarray(mean), np.ascontiguousarray(chol)
    )
