"""Fashion-MNIST from a .deb read in Python: the ar reader, the sha256 pin, IDX files, a tiny package."""

import gzip
import io
import struct
import tarfile

import numpy as np
import pytest

from training.datasets import fashion
from training.datasets.archives import read_ar, sha256_bytes
from training.errors import DataError

pytestmark = pytest.mark.timeout(30)


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def idx(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def tiny_deb(rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.array([0, 7, 9]),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.array([8, 1]),
    }
    data = {f"./{fashion.IDX_PREFIX}/{name}": idx(a) for name, a in arrays.items()}
    data[f"./{fashion.COPYRIGHT}"] = b"Expat licence text\n"
    deb = ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": tar_xz({}), "data.tar.xz": tar_xz(data)})
    return deb, arrays


def test_read_ar_pads_odd_members_and_strips_gnu_names():
    members = read_ar(ar_archive({"a": b"odd", "bb": b"even", "c": b""}))
    assert members == {"a": b"odd", "bb": b"even", "c": b""}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"PK\x03\x04 not an ar", "bad magic"),
        (b"!<arch>\nshort header", "truncated or corrupt"),
        (b"!<arch>\n" + b"x/".ljust(48) + b"99".ljust(10) + b"`\nabc", "truncated"),
    ],
)
def test_read_ar_rejects_broken_archives(raw, message):
    with pytest.raises(DataError, match=message):
        read_ar(raw)


def test_load_fashion_from_a_tiny_deb(tmp_path, monkeypatch):
    deb, arrays = tiny_deb(np.random.default_rng(0))
    monkeypatch.setattr(fashion, "DEB_SHA256", sha256_bytes(deb))
    (tmp_path / "dataset-fashion-mnist_0.0_all.deb").write_bytes(deb)
    ds = fashion.load_fashion(tmp_path)
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.x_test.shape == (2, 1, 28, 28)
    assert np.array_equal(ds.x_test[:, 0], arrays["t10k-images-idx3-ubyte.gz"])
    assert ds.y_train.tolist() == [0, 7, 9]
    assert [ds.classes[i] for i in ds.y_test] == ["Bag", "Trouser"]
    assert (tmp_path / "fashion-mnist" / "LICENSE").read_bytes() == b"Expat licence text\n"
    assert sha256_bytes(deb) in ds.source


def test_a_deb_with_another_hash_is_refused_and_nothing_is_written(tmp_path):
    deb, _ = tiny_deb(np.random.default_rng(1))
    (tmp_path / "dataset-fashion-mnist_0.0_all.deb").write_bytes(deb)
    with pytest.raises(DataError, match=r"sha256 .* != expected 39e172fe"):
        fashion.fetch_fashion(tmp_path)
    assert not (tmp_path / "fashion-mnist").exists()


def test_missing_data_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get download dataset-fashion-mnist="):
        fashion.load_fashion(tmp_path, download=False)


def test_data_command_fetches_fashion_from_a_local_deb(tmp_path, monkeypatch, capsys):
    from training.cli import main

    deb, _ = tiny_deb(np.random.default_rng(2))
    monkeypatch.setattr(fashion, "DEB_SHA256", sha256_bytes(deb))
    (tmp_path / "dataset-fashion-mnist_0.0_all.deb").write_bytes(deb)
    assert main(["data", "--dataset", "fashion", "--data-dir", str(tmp_path)]) == 0
    assert (
        "fashion-mnist: 3 train and 2 test images (debian:dataset-fashion-mnist_" in capsys.readouterr().out
    )
