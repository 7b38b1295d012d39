"""Novelty: a per-image statistic that ranks out-of-distribution images above the model's own kind, and
conformal p-values from a hashed calibration file the manifest declares. Both halves use this module:
training writes the file (`write_calibration`, run by `python -m training.novelty`), the service reads it
(`read_calibration`) and scores. No torch here.

Why not the negative ELBO itself: a likelihood is not a novelty score. A model of Fashion-MNIST gives MNIST
digits, simpler images, a higher likelihood than its own test images (Nalisnick et al. 2019), and our colour
model does the same for flat images. Input complexity (Serra et al. 2020) corrects for how simple an image is:

    complexity(x) = (-log2 p(x) - L(x)) / dims    bits per dimension, higher = more novel

with -log2 p(x) the model's code length (the negative ELBO in bits) and L(x) a generic lossless compressor's
code length of the same 8-bit image: a log-likelihood ratio of the model against a universal "background"
model. The compressor is zlib at level 9 on each channel's rows after PNG's Up filter (each row minus the one
above, mod 256). Measured (docs/novelty.md), it beats PNG files and lossless WebP as the background: PNG's
per-row filter choice and WebP's transforms fit MNIST digits in RGB or flat images so well that those score
as typical colour images, and Up-filtered zlib does not; it costs tens of microseconds per image.

The correction needs a likelihood that is a code length of the 8-bit image (the discretized logistic). A
Bernoulli likelihood over grey values is not one, and there the raw negative ELBO is what works (MNIST vs
Fashion-MNIST AUROC 1.000, complexity 0.23): so the statistic is chosen per likelihood (`default_statistic`)
and named in the calibration file, so that the numbers in it were computed the way the service computes them.

Conformal p-value (Vovk et al. 2005; Bates et al. 2023): with n calibration statistics s_1..s_n of held-out
in-distribution images the model never trained on, an image with statistic s gets

    p = (1 + #{i : s_i >= s}) / (n + 1)

If the image is exchangeable with the calibration images (in-distribution), P(p <= alpha) <= alpha: flagging
`p <= alpha` has a false-positive rate of at most alpha.

The file: an .npz of plain arrays, `statistic` (a 0-d str, one of STATISTICS) and `scores` (n,) float64,
sorted ascending, finite.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vae_contract.side_files import read_plain_arrays

NOVELTY_FILE = "novelty.npz"
Statistic = Literal["complexity_zlib_up", "neg_elbo_bits"]
COMPLEXITY: Statistic = "complexity_zlib_up"
NEG_ELBO: Statistic = "neg_elbo_bits"
STATISTICS: tuple[Statistic, ...] = (COMPLEXITY, NEG_ELBO)
ARRAYS = ("statistic", "scores")
# zlib's best compression: the code length is a property of the image, not of a speed trade-off.
ZLIB_LEVEL = 9
MIN_CALIBRATION = 19  # below this no p-value reaches 0.05
MAX_CALIBRATION = 1 << 20
LN2 = math.log(2)


class NoveltyFileError(ValueError):
    """A calibration file that disagrees with its manifest; the message says what."""


def default_statistic(likelihood: str) -> Statistic:
    """Input complexity where the likelihood is a code length of 8-bit images, else the negative ELBO."""
    return COMPLEXITY if likelihood == "discretized_logistic" else NEG_ELBO


def to_uint8(images: np.ndarray, pixel_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """float (N, C, H, W) in pixel_range -> the 8-bit values (N, C, H, W) the model's likelihood codes."""
    low, high = pixel_range
    scaled = (np.asarray(images, dtype=np.float32) - low) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def up_filtered(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> PNG's Up filter per channel: row 0 as is, each other row minus the one above,
    mod 256."""
    rows = images_u8.astype(np.int16)
    rows[:, :, 1:] -= images_u8[:, :, :-1]
    return (rows & 0xFF).astype(np.uint8)


def zlib_bits(images_u8: np.ndarray) -> np.ndarray:
    """(N,) the code length in bits of each uint8 (C, H, W) image: zlib (level 9) of its Up-filtered bytes,
    channel-major."""
    filtered = up_filtered(images_u8)
    return np.array([8 * len(zlib.compress(img.tobytes(), ZLIB_LEVEL)) for img in filtered], np.float64)


@dataclass(frozen=True)
class NoveltyTerms:
    """Per image, float64 (N,): what the statistic is made of, and the statistic."""

    bits_per_dim: np.ndarray  # the negative ELBO in bits per dimension (the model's code length)
    codec_bits_per_dim: np.ndarray  # zlib's code length of the Up-filtered 8-bit image, bits per dimension
    complexity: np.ndarray  # bits_per_dim - codec_bits_per_dim
    kl: np.ndarray  # KL(q(z|x) || p(z)) in nats, the ELBO's second term
    novelty: np.ndarray  # the chosen statistic, higher = more novel


def novelty_terms(
    statistic: Statistic, neg_elbo: np.ndarray, kl: np.ndarray, images_u8: np.ndarray
) -> NoveltyTerms:
    """The terms for images (N, C, H, W) uint8 with their negative ELBO and KL in nats (N,)."""
    dims = math.prod(images_u8.shape[1:])
    bpd = np.asarray(neg_elbo, np.float64) / (LN2 * dims)
    codec = zlib_bits(images_u8) / dims
    complexity = bpd - codec
    chosen = complexity if statistic == COMPLEXITY else bpd
    return NoveltyTerms(bpd, codec, complexity, np.asarray(kl, np.float64), chosen)


def conformal_p_values(statistics: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """(N,) (1 + #{calibration >= s}) / (n + 1) for each s; `calibration` sorted ascending."""
    n = len(calibration)
    at_least = n - np.searchsorted(calibration, np.asarray(statistics, np.float64), side="left")
    return (1.0 + at_least) / (n + 1.0)


@dataclass(frozen=True)
class Calibration:
    statistic: Statistic
    scores: np.ndarray  # (n,) float64 sorted ascending

    @property
    def count(self) -> int:
        return len(self.scores)

    def p_values(self, statistics: np.ndarray) -> np.ndarray:
        return conformal_p_values(statistics, self.scores)


@dataclass(frozen=True)
class NoveltyReport:
    """What reconstruct answers about novelty for a batch of images."""

    statistic: Statistic
    terms: NoveltyTerms
    alpha: float
    p_values: np.ndarray | None  # (N,) float64; None without a calibration file
    novel: np.ndarray | None  # (N,) bool, p_values <= alpha
    calibration_count: int | None
    reason: str | None  # why there are no p-values


def assess_novelty(
    statistic: str,
    neg_elbo: np.ndarray,
    kl: np.ndarray,
    images_u8: np.ndarray,
    alpha: float,
    calibration: Calibration | None,
    why_not: str | None = None,
) -> NoveltyReport:
    """The statistic's terms, and with a calibration its p-values and the flags `p <= alpha`."""
    chosen: Statistic = COMPLEXITY if statistic == COMPLEXITY else NEG_ELBO
    terms = novelty_terms(chosen, neg_elbo, kl, images_u8)
    if calibration is None:
        return NoveltyReport(chosen, terms, alpha, None, None, None, why_not or "no calibration file")
    p_values = calibration.p_values(terms.novelty)
    return NoveltyReport(chosen, terms, alpha, p_values, p_values <= alpha, calibration.count, None)


def write_calibration(path: Path, statistic: Statistic, scores: np.ndarray) -> None:
    """Write the file (sorted, float64); `read_calibration` is its check."""
    values = np.sort(np.asarray(scores, np.float64))
    if statistic not in STATISTICS or not np.isfinite(values).all() or len(values) < MIN_CALIBRATION:
        raise NoveltyFileError(f"refusing to write {statistic!r} with {len(values)} (finite?) scores")
    with Path(path).open("wb") as fh:
        np.savez(fh, statistic=np.array(statistic), scores=values)


def read_calibration(path: Path, statistic: str, count: int) -> Calibration:
    """Read and check a calibration file against the manifest's statistic and image count."""
    path = Path(path)
    if not MIN_CALIBRATION <= count <= MAX_CALIBRATION:
        raise NoveltyFileError(f"{path}: {count} calibration images; {MIN_CALIBRATION} to {MAX_CALIBRATION}")
    arrays = read_plain_arrays(path, ARRAYS, 8 * count + 64 * 1024, f"{count} scores", NoveltyFileError)
    named, scores = arrays["statistic"], arrays["scores"]
    if named.dtype.kind != "U" or named.shape != () or str(named) != statistic:
        raise NoveltyFileError(f"{path}: holds statistic {named!s:.64}, the manifest says {statistic!r}")
    if scores.dtype != np.float64 or scores.shape != (count,):
        raise NoveltyFileError(
            f"{path}: expected scores float64 ({count},), found {scores.dtype} {scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise NoveltyFileError(f"{path}: non-finite calibration scores")
    if (np.diff(scores) < 0).any():
        raise NoveltyFileError(f"{path}: calibration scores are not sorted ascending")
    return Calibration(statistic, np.ascontiguousarray(scores))  # type: ignore[arg-type]
