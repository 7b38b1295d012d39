"""Emoji from npm tarballs: real fixture PNGs (tests/fixtures/emoji, with their licences), compositing onto
white, the split by emoji that keeps skin tones and both styles together."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from training.datasets import emoji
from training.datasets.archives import sha256_bytes
from training.errors import DataError

pytestmark = pytest.mark.timeout(60)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "emoji"


def tarball(style: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("package/emoji.json", (FIXTURES / "emoji.json").read_bytes())] + [
            (f"package/img/{style}/64/{p.name.split('-', 1)[1]}", p.read_bytes())
            for p in sorted(FIXTURES.glob(f"{style}-*.png"))
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def emoji_dir(tmp_path, monkeypatch):
    styles = {}
    for key, style in emoji.STYLES.items():
        raw = tarball(key)
        (tmp_path / style.tarball).write_bytes(raw)
        styles[key] = emoji.EmojiStyle(style.package, style.version, sha256_bytes(raw), style.license, "")
    monkeypatch.setattr(emoji, "STYLES", styles)
    return tmp_path


def test_composite_puts_transparent_pixels_on_white():
    rgb = emoji.composite_rgb((FIXTURES / "google-1f600.png").read_bytes())
    assert rgb.shape == (3, 64, 64) and rgb.dtype == np.uint8
    assert rgb[:, 0, 0].tolist() == [255, 255, 255]  # the corner is fully transparent in the PNG
    assert rgb[:, 32, 32].tolist() != [255, 255, 255]


def test_entries_put_skin_tones_in_their_base_emoji_group():
    rows = emoji.emoji_entries(json.loads((FIXTURES / "emoji.json").read_text()))
    by_image = {r["image"]: r for r in rows}
    assert by_image["1f44d-1f3ff.png"]["group"] == by_image["1f44d.png"]["group"]
    assert by_image["1f44d-1f3ff.png"]["name"] == "THUMBS UP SIGN 1F3FF"
    assert len({r["group"] for r in rows}) == 3
    assert by_image["1f431.png"]["category"] == "Animals & Nature"


def test_fetch_and_load_from_tarballs(emoji_dir):
    cache = emoji.fetch_emoji(emoji_dir)
    with np.load(cache) as npz:
        assert npz["x"].shape == (8, 3, 64, 64)
        assert sorted(npz["style"].tolist()) == [0] * 4 + [1] * 4
    ds = emoji.load_emoji(emoji_dir, image_size=32)
    assert ds.x_train.shape[1:] == (3, 32, 32)
    assert len(ds.x_train) + len(ds.x_test) == 8
    assert ds.classes == emoji.CATEGORIES
    assert set(ds.y_train.tolist() + ds.y_test.tolist()) == {0, 1, 3}
    # One of three emoji goes to test, with every file of it: 2 (cat, grinning) or 4 (thumbs up + tone).
    assert len(ds.x_test) in (2, 4)
    assert ds.name == "emoji-32" and "sha256=" in ds.source


def test_a_tarball_with_another_hash_is_refused(emoji_dir, monkeypatch):
    google = emoji.STYLES["google"]
    wrong = emoji.EmojiStyle(google.package, google.version, "0" * 64, google.license, "")
    monkeypatch.setattr(emoji, "STYLES", {**emoji.STYLES, "google": wrong})
    with pytest.raises(DataError, match="sha256"):
        emoji.fetch_emoji(emoji_dir)
    assert not (emoji_dir / emoji.CACHE).exists()


def test_split_keeps_every_group_on_one_side_and_is_fixed():
    groups = np.repeat(np.arange(500), np.random.default_rng(0).integers(1, 12, 500))
    test = emoji.split_groups(groups)
    assert np.array_equal(test, emoji.split_groups(groups))
    for g in np.unique(groups):
        assert len(set(test[groups == g].tolist())) == 1
    assert len(np.unique(groups[test])) == 50  # 10% of the emoji, not of the files


def test_missing_cache_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="npm pack"):
        emoji.load_emoji(tmp_path, download=False)
