"""Write a model version's novelty calibration file and declare it, hashed, in its manifest.

    python -m training.novelty models/fashion/1 [--data-dir data]

The models trained on the whole training split, so the held-out in-distribution images come from the test
split: a numpy default_rng(0) permutation of its images, the first half calibrates (its statistics go into
`novelty.npz`), the second half is kept for measuring the false-positive rate (bench/novelty.py). Where the
dataset groups near-duplicates (emoji: an emoji's skin-tone variants and both styles), the permutation is of
the groups, so that no group is on both sides: the calibration then describes new emoji, as the
false-positive rate is measured on new emoji, and one atypical family cannot sit on both sides. The images
are the test images as a client would upload them (8-bit, not binarized), and the statistics are computed by
the service's own code (registry, reconstruct, novelty), so the calibration is of exactly what is served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.manifest import MANIFEST_FILE, read_manifest, sha256_file, verify_model_dir
from service.novelty import NOVELTY_FILE, write_calibration

SPLIT_SEED = 0
CHUNK = 64  # images per reconstruct call, the service's default max_batch_size


def held_out_split(
    n: int, groups: np.ndarray | None = None, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(calibrate, evaluate) index arrays: a seeded permutation of n test images, halved; with `groups`
    (n,), a permutation of the distinct groups, the first half of them calibrating."""
    if groups is None:
        order = np.random.default_rng(seed).permutation(n)
        return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    distinct = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(distinct))
    calibrate = np.isin(groups, distinct[order[: len(distinct) // 2]])
    return np.flatnonzero(calibrate), np.flatnonzero(~calibrate)


def held_out_groups(model_dir: Path, data_dir: str | None = None) -> np.ndarray | None:
    """(N,) each test image's group where the dataset groups near-duplicates (emoji), else None."""
    from training.config import TrainConfig

    config = TrainConfig.from_dict(read_manifest(model_dir).training)
    if config.dataset != "emoji":
        return None
    from training.datasets.emoji import CACHE, split_groups

    with np.load(Path(data_dir or config.data_dir) / CACHE, allow_pickle=False) as npz:
        groups = npz["group"]
    return groups[split_groups(groups)]  # the order load_emoji gives x_test


def held_out_images(model_dir: Path, data_dir: str | None = None) -> np.ndarray:
    """The version's test images, float32 (N, C, H, W) in [0, 1], shaped as the manifest's image."""
    from PIL import Image

    from service.imaging import prepare_image
    from training.config import TrainConfig
    from training.evaluate import evaluation_data

    manifest = read_manifest(model_dir)
    config = TrainConfig.from_dict(manifest.training)
    x = evaluation_data(config, data_dir).x_test  # uint8 (N, C, H, W)
    if x.shape[1:] == manifest.image.shape:
        return x.astype(np.float32) / 255.0
    # Another size or channel count: prepared exactly as the service prepares an upload.
    pil = [Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)) for img in x]
    return np.stack([prepare_image(img, manifest.image) for img in pil])


async def _measure(model_dir: Path, images: np.ndarray, calibrated: bool) -> dict[str, Any]:
    from service.config import Settings
    from service.inference import ModelRegistry

    model_dir = Path(model_dir).resolve()
    name, version = model_dir.parent.name, int(model_dir.name)
    settings = Settings(
        models_dir=model_dir.parent.parent, models=[name], version_policy=f"specific:{version}",
        max_batch_size=CHUNK, max_queue=4096, request_timeout_s=600, provider="cpu",
    )  # fmt: skip
    registry = ModelRegistry(settings)
    await asyncio.to_thread(registry.load)
    try:
        vae = registry.get(name, version)
        if not calibrated:
            vae.calibration = None  # a file being replaced: compute the statistic this likelihood takes
        parts: dict[str, list[np.ndarray]] = {"scores": [], "novelty": [], "p_values": []}
        seconds = {"reconstruct": 0.0, "novelty": 0.0}
        for start in range(0, len(images), CHUNK):
            x = np.ascontiguousarray(images[start : start + CHUNK])
            tic = time.perf_counter()
            rec = await vae.reconstruct(x)
            mid = time.perf_counter()
            report = vae.novelty(x, rec, 0.05)
            seconds["reconstruct"] += mid - tic
            seconds["novelty"] += time.perf_counter() - mid
            parts["scores"].append(rec.scores)
            parts["novelty"].append(report.terms.novelty)
            if report.p_values is not None:
                parts["p_values"].append(report.p_values)
        out: dict[str, Any] = {k: np.concatenate(v) if v else None for k, v in parts.items()}
        return {**out, "statistic": vae.novelty_statistic, "seconds": seconds}
    finally:
        await registry.close()


def measure(model_dir: Path, images: np.ndarray, calibrated: bool = True) -> dict[str, Any]:
    """What the service answers for float32 images (N, C, H, W): `scores`, `novelty`, `p_values` (None
    without a calibration file, or with calibrated=False), the `statistic`'s name, and the data-plane
    `seconds` spent in reconstruct and in the novelty terms."""
    return asyncio.run(_measure(model_dir, images, calibrated))


def _without_novelty(text: str) -> str:
    """A manifest's text without its `novelty` section; other fields keep their exact text where the section
    is the last one (as `_with_novelty` writes it), else the whole file is rewritten."""
    raw = json.loads(text)
    if "novelty" not in raw:
        return text
    ours = text.rfind(',\n  "novelty": {')
    if ours >= 0 and "novelty" not in json.loads(text[:ours] + "\n}"):
        return text[:ours] + "\n}\n"
    del raw["novelty"]
    return json.dumps(raw, indent=2, ensure_ascii=False) + "\n"


def _with_novelty(text: str, spec: dict[str, Any]) -> str:
    """A manifest's text (without `novelty`) with the section appended before the closing brace."""
    section = json.dumps({"novelty": spec}, indent=2, ensure_ascii=False)[1:-2]
    return text.rstrip().removesuffix("}").rstrip() + "," + section + "\n}\n"


def calibrate(model_dir: Path, data_dir: str | None = None) -> dict[str, object]:
    """Write novelty.npz from the calibration half of the test images and declare it in model.json."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_FILE
    # A file being replaced is dropped from the manifest first: the rest must verify without it.
    text = _without_novelty(manifest_path.read_text(encoding="utf-8"))
    manifest_path.write_text(text, encoding="utf-8")
    verify_model_dir(model_dir)
    images = held_out_images(model_dir, data_dir)
    groups = held_out_groups(model_dir, data_dir)
    calibrate_idx, evaluate_idx = held_out_split(len(images), groups)
    measured = measure(model_dir, images[calibrate_idx])
    statistic, values = measured["statistic"], measured["novelty"]
    path = model_dir / NOVELTY_FILE
    write_calibration(path, statistic, values)
    spec = {
        "statistic": statistic,
        "file": NOVELTY_FILE,
        "sha256": sha256_file(path),
        "count": len(values),
        "source": f"{len(values)} of the {len(images)} test images, never trained on: a numpy "
        f"default_rng({SPLIT_SEED}) permutation of the {'emoji groups' if groups is not None else 'images'}, "
        f"first half; the other {len(evaluate_idx)} measure the false-positive rate (training/novelty.py)",
    }
    manifest_path.write_text(_with_novelty(text, spec), encoding="utf-8")
    verify_model_dir(model_dir)  # checked as the service will check it
    quantiles = np.quantile(values, [0.5, 0.95, 0.99])
    return {**spec, "median": round(float(quantiles[0]), 4), "q95": round(float(quantiles[1]), 4),
            "q99": round(float(quantiles[2]), 4), "nan": not math.isfinite(float(values.sum()))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.novelty", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("model_dirs", type=Path, nargs="+", help="version folders, e.g. models/fashion/1")
    parser.add_argument("--data-dir", default=None, help="override the data directory in the manifest")
    args = parser.parse_args(argv)
    for model_dir in args.model_dirs:
        print(json.dumps({"model_dir": str(model_dir), **calibrate(model_dir, args.data_dir)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
