"""Write a model version's novelty calibration file and declare it, hashed, in its manifest.

    python -m training.novelty models/fashion/1 [--data-dir data]

The models trained on the whole training split, so the held-out in-distribution images come from the test
split: a numpy default_rng(0) permutation of its images, the first half calibrates (its statistics go into
`novelty.npz`), the second half is kept for measuring the false-positive rate (bench/novelty.py). Where the
dataset groups near-duplicates (emoji: an emoji's skin-tone variants and both styles), the permutation is of
the groups, so that no group is on both sides: the calibration then describes new emoji, as the
false-positive rate is measured on new emoji, and one atypical family cannot sit on both sides. The images
are the test images as a client would upload them (8-bit, not binarized), and the statistic is computed with
the exported graphs (onnxruntime) and vae_contract's numpy terms, the code the service's reconstruct runs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vae_contract.likelihoods import discretized_logistic_nll, kl_to_prior, reconstruction_nll
from vae_contract.manifest import MANIFEST_FILE, GraphSpec, read_manifest, sha256_file, verify_model_dir
from vae_contract.novelty import (
    NOVELTY_FILE,
    Statistic,
    default_statistic,
    novelty_terms,
    to_uint8,
    write_calibration,
)
from vae_contract.priors import read_mixture

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

    from training.config import TrainConfig
    from training.evaluate import evaluation_data
    from vae_contract.imaging import prepare_image

    manifest = read_manifest(model_dir)
    config = TrainConfig.from_dict(manifest.training)
    x = evaluation_data(config, data_dir).x_test  # uint8 (N, C, H, W)
    if x.shape[1:] == manifest.image.shape:
        return x.astype(np.float32) / 255.0
    # Another size or channel count: prepared exactly as the service prepares an upload.
    pil = [Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)) for img in x]
    return np.stack([prepare_image(img, manifest.image) for img in pil])


def statistics(model_dir: Path, images: np.ndarray, chunk: int = CHUNK) -> tuple[Statistic, np.ndarray]:
    """The novelty statistic of float32 images (N, C, H, W) under a version folder, and its name: the graphs
    through onnxruntime and the terms through vae_contract, as the service's reconstruct computes them (a
    test holds the two equal)."""
    import onnxruntime as ort

    manifest = verify_model_dir(model_dir)
    spec = manifest.prior
    prior = read_mixture(model_dir / spec.file, spec.components, manifest.latent_dim) if spec else None
    providers = ["CPUExecutionProvider"]

    def session(graph: GraphSpec) -> tuple[Any, str]:
        return ort.InferenceSession(str(model_dir / graph.file), providers=providers), graph.inputs[0].name

    encoder, decoder = session(manifest.encoder), session(manifest.decoder)
    scorer = session(manifest.scorer) if manifest.scorer is not None else None
    low, high = manifest.image.pixel_range
    statistic = default_statistic(manifest.likelihood)
    values = []
    for start in range(0, len(images), chunk):
        x = np.ascontiguousarray(images[start : start + chunk], dtype=np.float32)
        mean, log_var = encoder[0].run(None, {encoder[1]: x})
        if scorer is not None:
            nll = scorer[0].run(None, {scorer[1]: x})[0].astype(np.float64)
        elif manifest.likelihood == "discretized_logistic":
            params = decoder[0].run(None, {decoder[1]: mean})[1]
            nll = discretized_logistic_nll(x, params, manifest.channel_coupling)
        else:
            recon = np.clip(decoder[0].run(None, {decoder[1]: mean})[0], low, high)
            nll = reconstruction_nll(x, recon, manifest.likelihood, manifest.gaussian_sigma)
        kl = kl_to_prior(mean, log_var) if prior is None else prior.kl_bound(mean, log_var)
        u8 = to_uint8(x, manifest.image.pixel_range)
        values.append(novelty_terms(statistic, nll + kl, kl, u8).novelty)
    return statistic, np.concatenate(values)


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
    statistic, values = statistics(model_dir, images[calibrate_idx])
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
