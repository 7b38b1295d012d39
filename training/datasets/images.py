"""Image datasets as uint8 arrays in memory: the dataset type every loader returns, IDX files (MNIST,
Fashion-MNIST, KMNIST, ...) and folders of PNG/JPEG images."""

from __future__ import annotations

import gzip
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
HOW_TO_GET_IDX = (
    "point --dataset idx --data-dir at a folder of IDX files (train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-...), or train on real MNIST: `make data-mnist`, then --dataset mnist"
)


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W) with 0..255 pixels; labels are -1 where unknown."""

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] = ()  # label names by index, where the dataset has named classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    def limited(self, train_limit: int = 0, test_limit: int = 0) -> ImageDataset:
        tr = slice(None, train_limit or None)
        te = slice(None, test_limit or None)
        return ImageDataset(
            self.name,
            self.source,
            self.x_train[tr],
            self.y_train[tr],
            self.x_test[te],
            self.y_test[te],
            self.classes,
        )


# --- IDX files (MNIST, Fashion-MNIST, KMNIST, ...)

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 <type> <ndim>, big-endian dims, then the data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX body has {len(raw) - header} bytes, dims {dims} need {expected} (truncated?)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder}: missing {stem}[.gz]; an IDX dataset folder needs train-/t10k- images and labels"
    )


def load_idx_dir(folder: Path, name: str | None = None) -> ImageDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory; " + HOW_TO_GET_IDX)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
        parts[split] = (images[:, None, :, :].copy(), labels.astype(np.int64))
    return ImageDataset(
        name or folder.name, f"idx:{folder}", parts["train"][0], parts["train"][1], *parts["test"]
    )


# --- folders of PNG/JPEG images (faces, CIFAR-style)


def load_image_folder(
    folder: Path, image_size: int, channels: int, test_fraction: float = 0.1, seed: int = 0
) -> ImageDataset:
    """Every PNG/JPEG below `folder`, prepared exactly as the service prepares uploads (vae_contract.imaging).

    Files that fail to decode are skipped with a warning; a folder with no usable image is an error.
    A fixed-seed shuffle splits off `test_fraction` of the images for evaluation.
    """
    from vae_contract.imaging import ImageDecodeError, decode_image, prepare_image
    from vae_contract.manifest import ImageSpec

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory (expected a folder of PNG/JPEG images)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    spec = ImageSpec(channels=channels, height=image_size, width=image_size)  # type: ignore[arg-type]
    images, skipped = [], []
    for path in files:
        try:
            arr = prepare_image(decode_image(path.read_bytes()), spec)
        except (ImageDecodeError, OSError) as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        images.append(np.rint(arr * 255.0).astype(np.uint8))
    if skipped:
        log.warning("skipped %d unreadable images in %s, e.g. %s", len(skipped), folder, skipped[0])
    if len(images) < 2:
        raise DataError(f"{folder}: found {len(images)} usable PNG/JPEG images; need at least 2")
    x = np.stack(images)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    labels = np.full(len(x), -1, dtype=np.int64)
    return ImageDataset(folder.name, f"folder:{folder}", x[train], labels[train], x[test], labels[test])
