"""Colour emoji from the npm packages `emoji-datasource-google` (Noto Emoji, Apache-2.0) and
`emoji-datasource-twitter` (Twemoji, CC-BY-4.0), version 16.0.0: 3,786 RGBA 64x64 PNGs per style.

Each package tarball is fetched with `npm pack`, sha256-checked, and read in Python. Alpha is composited onto
white (the background the images are drawn for); the apple and facebook sets are never read (their images are
not freely licensed). Names, categories and skin-tone variants come from `package/emoji.json`.

The split is by emoji, not by file: an emoji, its skin-tone variants and both styles form one group, and a
fixed-seed permutation of the groups puts TEST_FRACTION of them in the test set, so no near-duplicate of a
test image is ever trained on.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.datasets.archives import check_sha256, download_npm, tar_members
from training.datasets.images import ImageDataset
from training.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmojiStyle:
    package: str
    version: str
    sha256: str
    license: str
    attribution: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{self.package}-{self.version}.tgz"


STYLES = {
    "google": EmojiStyle(
        "emoji-datasource-google",
        "16.0.0",
        "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
        "Apache-2.0",
        "Noto Emoji images, Copyright Google Inc., Apache License 2.0",
    ),
    "twitter": EmojiStyle(
        "emoji-datasource-twitter",
        "16.0.0",
        "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
        "CC-BY-4.0",
        "Twemoji graphics, Copyright Twitter, Inc. and other contributors, CC-BY 4.0",
    ),
}
# Unicode's category order (emoji-test.txt); label i is CATEGORIES[i].
CATEGORIES = (
    "Smileys & Emotion",
    "People & Body",
    "Component",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
BACKGROUND = (255, 255, 255)  # alpha is composited onto white
SOURCE_SIZE = 64
CACHE = "emoji-64.npz"
SPLIT_SEED = 0
TEST_FRACTION = 0.1
LICENSE = "; ".join(f"{s.spec}: {s.attribution}" for s in STYLES.values())
HOW_TO_GET = (
    "run `python -m training data --dataset emoji --data-dir DIR` where npm can reach its registry "
    "(it runs `npm pack " + " ".join(s.spec for s in STYLES.values()) + "`); without npm, fetch the two "
    "tarballs elsewhere (`npm pack NAME@16.0.0`, or https://registry.npmjs.org/NAME/-/NAME-16.0.0.tgz) and "
    "copy them into DIR, where they are used as they are after their sha256 is checked"
)


def _tarball(data_dir: Path, style: EmojiStyle) -> bytes:
    local = data_dir / style.tarball
    raw = local.read_bytes() if local.is_file() else download_npm(style.spec, HOW_TO_GET)
    check_sha256(raw, style.sha256, style.tarball, HOW_TO_GET)
    return raw


def emoji_entries(emoji_json: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per image file: image, name, category, group (the base emoji's index); variants after bases."""
    rows = []
    for group, entry in enumerate(sorted(emoji_json, key=lambda e: (e["sort_order"], e["unified"]))):
        base = {"group": group, "category": entry["category"], "name": entry["name"] or entry["short_name"]}
        rows.append({**base, "image": entry["image"], "flags": entry})
        for tone, variant in sorted(entry.get("skin_variations", {}).items()):
            rows.append(
                {**base, "image": variant["image"], "name": f"{base['name']} {tone}", "flags": variant}
            )
    return rows


def composite_rgb(png: bytes) -> np.ndarray:
    """RGBA PNG bytes -> uint8 (3, H, W), alpha composited onto BACKGROUND."""
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    rgb = Image.alpha_composite(background, rgba).convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def fetch_emoji(data_dir: Path) -> Path:
    """Make sure `data_dir/emoji-64.npz` exists, building it from the two npm tarballs; return its path."""
    data_dir = Path(data_dir)
    cache = data_dir / CACHE
    if cache.is_file():
        return cache
    data_dir.mkdir(parents=True, exist_ok=True)
    images, groups, styles, labels, names = [], [], [], [], []
    rows: list[dict[str, Any]] = []
    for style_index, (style_name, style) in enumerate(STYLES.items()):
        raw = _tarball(data_dir, style)
        if not rows:
            meta = tar_members(raw, {"package/emoji.json"})
            if "package/emoji.json" not in meta:
                raise DataError(f"{style.tarball}: no package/emoji.json inside. " + HOW_TO_GET)
            rows = emoji_entries(json.loads(meta["package/emoji.json"]))
        wanted = {
            f"package/img/{style_name}/{SOURCE_SIZE}/{r['image']}": r
            for r in rows
            if r["flags"].get(f"has_img_{style_name}")
        }
        pngs = tar_members(raw, set(wanted))
        del raw
        for path, row in wanted.items():
            if path not in pngs:
                continue
            arr = composite_rgb(pngs[path])
            if arr.shape != (3, SOURCE_SIZE, SOURCE_SIZE):
                raise DataError(f"{style.tarball}:{path}: {arr.shape[1:]} image, expected 64x64")
            images.append(arr)
            groups.append(row["group"])
            styles.append(style_index)
            labels.append(CATEGORIES.index(row["category"]))
            names.append(row["name"])
        log.info("%s: %d images", style.spec, len(pngs))
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        x=np.stack(images),
        group=np.asarray(groups, dtype=np.int64),
        style=np.asarray(styles, dtype=np.int64),
        label=np.asarray(labels, dtype=np.int64),
        name=np.asarray(names),
        source=np.array(" + ".join(f"npm:{s.tarball} sha256={s.sha256}" for s in STYLES.values())),
    )
    tmp.replace(cache)  # atomic: a killed conversion never leaves a half-written cache behind
    log.info("wrote %s (%d images)", cache, len(images))
    return cache


def split_groups(
    groups: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> np.ndarray:
    """Boolean test mask: a fixed-seed permutation of the distinct groups, the first test_fraction to test."""
    distinct = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = max(1, round(len(distinct) * test_fraction))
    return np.isin(groups, distinct[order[:n_test]])


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 3, S, S) -> (N, 3, size, size), resampled exactly as the service resamples uploads."""
    if x.shape[-1] == size:
        return x
    from vae_contract.imaging import prepare_image
    from vae_contract.manifest import ImageSpec

    spec = ImageSpec(channels=3, height=size, width=size)
    out = [
        np.rint(prepare_image(Image.fromarray(img.transpose(1, 2, 0)), spec) * 255.0).astype(np.uint8)
        for img in x
    ]
    return np.stack(out)


def load_emoji(data_dir: Path, image_size: int = 32, download: bool = True) -> ImageDataset:
    cache = Path(data_dir) / CACHE
    if not cache.is_file():
        if not download:
            raise DataError(f"{cache} not found; " + HOW_TO_GET)
        fetch_emoji(Path(data_dir))
    try:
        with np.load(cache, allow_pickle=False) as npz:
            x, group, label, source = npz["x"], npz["group"], npz["label"], str(npz["source"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{cache} is corrupt ({exc}); delete it and " + HOW_TO_GET) from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or len(x) != len(group):
        raise DataError(f"{cache}: unexpected layout {x.dtype} {x.shape}; delete it and " + HOW_TO_GET)
    test = split_groups(group)
    x = resize(x, image_size)
    return ImageDataset(
        f"emoji-{image_size}",
        f"{source}; alpha on white; split by emoji (seed {SPLIT_SEED}, {TEST_FRACTION:.0%} of emoji to test)",
        x[~test],
        label[~test],
        x[test],
        label[test],
        CATEGORIES,
    )
