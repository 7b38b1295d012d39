"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) from the Debian package `dataset-fashion-mnist` (Expat).

The pinned .deb is fetched with `apt-get download`, sha256-checked, and read as an ar archive in Python
(no dpkg, no root); its four IDX files and its copyright file are written to `DATA_DIR/fashion-mnist/`.
A .deb already in DATA_DIR is used without the network. 60,000 train and 10,000 test 28x28 grayscale
images in 10 classes, split as published.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from training.datasets.archives import check_sha256, deb_data_files, download_deb
from training.datasets.images import ImageDataset, load_idx_dir
from training.errors import DataError

log = logging.getLogger(__name__)

PACKAGE = "dataset-fashion-mnist"
VERSION = "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
IDX_PREFIX = "usr/share/datasets/fashion-mnist"
COPYRIGHT = f"usr/share/doc/{PACKAGE}/copyright"
FOLDER = "fashion-mnist"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
LICENSE = "MIT (Expat), Copyright (c) 2017 Zalando SE"
# The label order of the IDX files (Xiao et al. 2017, table 1).
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
HOW_TO_GET = (
    f"run `python -m training data --dataset fashion --data-dir DIR` on a Debian/Ubuntu host with apt "
    f"(it runs `apt-get download {PACKAGE}={VERSION}`; `apt-get update` first if apt knows no such package), "
    f"or copy {PACKAGE}_{VERSION}_all.deb (sha256 {DEB_SHA256}) into DIR by hand"
)


def fetch_fashion(data_dir: Path) -> Path:
    """Make sure `data_dir/fashion-mnist/` holds the four IDX files; return that folder."""
    data_dir = Path(data_dir)
    folder = data_dir / FOLDER
    if all((folder / name).is_file() for name in IDX_FILES):
        return folder
    data_dir.mkdir(parents=True, exist_ok=True)
    local = sorted(data_dir.glob(f"{PACKAGE}_*.deb"))
    deb = local[0].read_bytes() if local else download_deb(PACKAGE, VERSION, HOW_TO_GET)
    check_sha256(deb, DEB_SHA256, f"{PACKAGE} {VERSION}", HOW_TO_GET)
    files = deb_data_files(deb, "")
    missing = [n for n in IDX_FILES if f"{IDX_PREFIX}/{n}" not in files]
    if missing:
        raise DataError(f"{PACKAGE}: the package lacks {missing}. " + HOW_TO_GET)
    staging = Path(tempfile.mkdtemp(prefix=".fashion-", dir=data_dir))
    try:
        for name in IDX_FILES:
            (staging / name).write_bytes(files[f"{IDX_PREFIX}/{name}"])
        if COPYRIGHT in files:
            (staging / "LICENSE").write_bytes(files[COPYRIGHT])
        staging.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)  # a killed fetch never leaves a half-written folder behind
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s from %s %s", folder, PACKAGE, VERSION)
    return folder


def load_fashion(data_dir: Path, download: bool = True) -> ImageDataset:
    folder = Path(data_dir) / FOLDER
    if not all((folder / name).is_file() for name in IDX_FILES):
        if not download:
            raise DataError(f"{folder}: no Fashion-MNIST IDX files; " + HOW_TO_GET)
        fetch_fashion(Path(data_dir))
    ds = load_idx_dir(folder, name="fashion-mnist")
    ds.source = f"debian:{PACKAGE}_{VERSION}_all.deb sha256={DEB_SHA256}"
    ds.classes = CLASSES
    return ds
