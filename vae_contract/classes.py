"""Class-conditional sampling: what p(z | class) a version ships, in one of two kinds (the manifest's
`conditional.kind`), each a hashed `classes.npz` of plain arrays that the service reads with
allow_pickle=False and checks here. Both draw with numpy's PCG64 Generator seeded by the request's seed, in
the one implementation both training's measurements and the service use. No torch.

`gaussian_per_class` (`ClassGaussians`; `write_class_gaussians`, called by training's export after
`training/class_gaussians.py` fits them): names (K,) str, counts (K,) int, mean (K, D) float32 and cholesky
(K, D, D) float32, the lower triangular factor L_c of class c's covariance; one Gaussian per class,

    eps = np.random.default_rng(seed).standard_normal((n, D), dtype=np.float32)
    z = mean[c] + temperature * eps @ L_c^T

`prior_components_per_class` (`ClassComponents`; `write_class_components`): names (K,), counts (K,) and
component_class (M,) int, the class of each of the prior's M mixture components (-1: of no class, drawn only
without a label). Class c's distribution is the prior restricted to its components, their weights
renormalised, drawn as the prior is (`MixturePrior.draw`); a class without components (no training image)
draws from the whole prior, as `gaussian_per_class` gives such a class the prior's Gaussian. For a prior
made of training images' posteriors (training/aggregate_prior.py) that is the aggregate posterior of the
class's own images, which one Gaussian per class only approximates: a class whose images sit in several
places of the latent space gets draws from each of them, not from the space between them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_contract.priors import MixturePrior
from vae_contract.side_files import read_plain_arrays

CLASSES_FILE = "classes.npz"
# K * D * D float32 values of the Cholesky factors at most (64 MiB), and a bound on the number of classes.
MAX_CLASS_VALUES = 1 << 24
MAX_CLASSES = 4096
ARRAYS = ("names", "counts", "mean", "cholesky")
COMPONENT_ARRAYS = ("names", "counts", "component_class")
GAUSSIANS_KIND = "gaussian_per_class"
COMPONENTS_KIND = "prior_components_per_class"
# The known kinds of the manifest's `conditional.kind`.
CONDITIONAL_KINDS = (GAUSSIANS_KIND, COMPONENTS_KIND)


class ClassFileError(ValueError):
    """A class statistics file that disagrees with its manifest; the message says what."""


@dataclass(frozen=True)
class _Classes:
    names: tuple[str, ...]  # (K,) class names, index = dataset label
    counts: np.ndarray  # (K,) training images per class

    def index(self, label: str) -> int | None:
        try:
            return self.names.index(label)
        except ValueError:
            return None


@dataclass(frozen=True)
class ClassGaussians(_Classes):
    mean: np.ndarray  # (K, D) float32
    cholesky: np.ndarray  # (K, D, D) float32, lower triangular

    def draw(self, label: int, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
        """(n, D) float32 draws from class `label`'s Gaussian: z = mean + t * eps @ L^T, eps ~ PCG64(seed)."""
        eps = np.random.default_rng(seed).standard_normal((n, self.mean.shape[1]), dtype=np.float32)
        draws = self.mean[label] + np.float32(temperature) * (eps @ self.cholesky[label].T)
        return draws.astype(np.float32)


@dataclass(frozen=True)
class ClassComponents(_Classes):
    component_class: np.ndarray  # (M,) int64: the class of each of the prior's components, -1 for none
    per_class: tuple[MixturePrior, ...]  # (K,) the prior restricted to each class's components

    def draw(self, label: int, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
        """(n, D) float32 draws from class `label`'s components, exactly as `MixturePrior.draw` draws."""
        return self.per_class[label].draw(n, seed, temperature)


ClassConditional = ClassGaussians | ClassComponents


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
    _check_classes(path, classes)
    if k * d * d > MAX_CLASS_VALUES:
        raise ClassFileError(f"{path}: {k} classes of {d}x{d} factors are over the {MAX_CLASS_VALUES} limit")
    limit = 4 * (k * d * d + k * d) + 8 * k + 4 * k * 1024 + 64 * 1024
    arrays = read_plain_arrays(path, ARRAYS, limit, f"{k} classes of latent size {d}", ClassFileError)
    names, counts, mean, chol = (arrays[name] for name in ARRAYS)
    _check_names_and_counts(path, names, counts, classes)
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


def write_class_components(
    names: tuple[str, ...], counts: np.ndarray, component_class: np.ndarray, folder: Path
) -> tuple[Path, str]:
    """Write a `prior_components_per_class` `classes.npz` into folder; returns its path and its sha256."""
    path = Path(folder) / CLASSES_FILE
    with path.open("wb") as fh:
        np.savez(
            fh,
            names=np.asarray(names),
            counts=np.asarray(counts, np.int64),
            component_class=np.asarray(component_class, np.int64),
        )
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _check_names_and_counts(path: Path, names: np.ndarray, counts: np.ndarray, classes: list[str]) -> None:
    k = len(classes)
    if names.dtype.kind != "U" or names.shape != (k,) or [str(n) for n in names] != list(classes):
        raise ClassFileError(f"{path}: its class names differ from the manifest's {classes}")
    if counts.dtype.kind not in "iu" or counts.shape != (k,) or (counts < 0).any():
        raise ClassFileError(f"{path}: counts must be {k} non-negative integers")


def _check_classes(path: Path, classes: list[str]) -> None:
    k = len(classes)
    if k < 1 or k > MAX_CLASSES:
        raise ClassFileError(f"{path}: {k} classes; between 1 and {MAX_CLASSES} are served")
    if len(set(classes)) != k:
        raise ClassFileError(f"{path}: the manifest's class names are not unique")


def read_class_components(path: Path, classes: list[str], prior: MixturePrior) -> ClassComponents:
    """Read and check a `prior_components_per_class` file against the manifest's classes and its prior."""
    path = Path(path)
    _check_classes(path, classes)
    k, m = len(classes), prior.components
    limit = 8 * (m + k) + 4 * k * 1024 + 64 * 1024
    arrays = read_plain_arrays(
        path, COMPONENT_ARRAYS, limit, f"{k} classes of {m} components", ClassFileError
    )
    names, counts, owner = (arrays[name] for name in COMPONENT_ARRAYS)
    _check_names_and_counts(path, names, counts, classes)
    if owner.dtype.kind not in "iu" or owner.shape != (m,):
        raise ClassFileError(f"{path}: component_class must be {m} integers, one per prior component")
    if (owner < -1).any() or (owner >= k).any():
        raise ClassFileError(f"{path}: component_class holds a class index outside -1..{k - 1}")
    per_class = []
    for c in range(k):
        members = np.flatnonzero(owner == c)
        total = float(prior.weights[members].sum())
        if not total > 0:  # no component of its own (no training image): the class draws from the prior
            per_class.append(prior)
            continue
        weights = prior.weights[members] / total
        per_class.append(MixturePrior(prior.means[members], prior.log_vars[members], weights))
    return ClassComponents(tuple(classes), counts.astype(np.int64), owner.astype(np.int64), tuple(per_class))


def read_conditional(
    path: Path, kind: str, classes: list[str], latent_dim: int, prior: MixturePrior | None
) -> ClassConditional:
    """The class file of a manifest's `conditional` section, read as its kind says."""
    if kind == COMPONENTS_KIND:
        if prior is None:
            raise ClassFileError(f"{path}: {COMPONENTS_KIND} names components of a prior, and there is none")
        return read_class_components(path, classes, prior)
    return read_class_gaussians(path, classes, latent_dim)
