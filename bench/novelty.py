"""The novelty table of docs/novelty.md: for every served model version, AUROC of the old reconstruct score
(negative ELBO) and of the served novelty statistic, in-distribution test images against real images of other
kinds; the false-positive rate of `p <= alpha` on the evaluation half of the test split; the extra cost.

    PYTHONPATH=$PWD python -m bench.novelty --data-dir data --ood-dir /tmp/ood [--n 1000] [--n-colour 500]

Everything runs through the service's own code in-process (registry, reconstruct, novelty: `measure`), on
the images a client would upload. In-distribution: the half of the test split that `python -m
training.novelty` did not calibrate on (at most --n for AUROC, all of it for the FPR).
Out-of-distribution (seeded picks): the other grey dataset's test images, emoji as grey 28x28, flat and
uniform-noise images for the grey models; for the colour model MNIST and Fashion-MNIST as RGB 32x32,
photographs (CIFAR-10/100 and ImageNet PNGs from foolbox's wheel, crops of scikit-image's photographs), LFW
faces (scikit-image's lfw_subset), flat and noise images. --ood-dir holds the two wheels unpacked
(`pip download --no-deps foolbox==3.3.4 scikit-image==0.26.0`, then `unzip` into fb/ and sk/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.novelty_explore import auroc, data, emoji_test, lfw, photos, to_pil
from training.novelty import held_out_groups, held_out_images, held_out_split
from vae_contract.imaging import prepare_image
from vae_contract.manifest import read_manifest


async def _measure(model_dir: Path, images: np.ndarray) -> dict[str, Any]:
    from service.config import Settings
    from service.inference import ModelRegistry

    model_dir = Path(model_dir).resolve()
    name, version = model_dir.parent.name, int(model_dir.name)
    settings = Settings(
        models_dir=model_dir.parent.parent, models=[name], version_policy=f"specific:{version}",
        max_batch_size=64, max_queue=4096, request_timeout_s=600, provider="cpu",
    )  # fmt: skip
    registry = ModelRegistry(settings)
    await asyncio.to_thread(registry.load)
    try:
        vae = registry.get(name, version)
        parts: dict[str, list[np.ndarray]] = {"scores": [], "novelty": [], "p_values": []}
        seconds = {"reconstruct": 0.0, "novelty": 0.0}
        for start in range(0, len(images), 64):
            x = np.ascontiguousarray(images[start : start + 64])
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


def measure(model_dir: Path, images: np.ndarray) -> dict[str, Any]:
    """What the service answers for float32 images (N, C, H, W), through its registry and reconstruct in
    batches of 64: `scores`, `novelty`, `p_values` (None without a calibration file), the `statistic`'s
    name, and the data-plane `seconds` spent in reconstruct and in the novelty step."""
    return asyncio.run(_measure(model_dir, images))


SERVED = ("mnist/1", "mnist/2", "mnist-2d/1", "fashion/1", "emoji/6", "emoji/7")


def out_sets(model_dir: Path, data_dir: Path, ood_dir: Path, n: int) -> dict[str, np.ndarray]:
    spec = read_manifest(model_dir).image
    raw = data(data_dir, ood_dir)
    own = read_manifest(model_dir).dataset.name

    def conv(images: list[Any]) -> np.ndarray:
        return np.stack([prepare_image(im, spec) for im in images])

    def pick(a: np.ndarray, seed: int) -> np.ndarray:
        return a[np.sort(np.random.default_rng(seed).permutation(len(a))[:n])]

    c, h, w = spec.shape
    sets: dict[str, np.ndarray] = {}
    if c == 1:
        other = "fashion" if own == "mnist" else "mnist"
        sets[other] = pick(raw[other], 1).astype(np.float32) / 255
        sets["emoji-grey"] = conv([to_pil(x) for x in emoji_test(data_dir)[0]])
    else:
        sets["mnist-rgb"] = conv([to_pil(x) for x in pick(raw["mnist"], 1)])
        sets["fashion-rgb"] = conv([to_pil(x) for x in pick(raw["fashion"], 1)])
        sets["photos"] = conv(photos(ood_dir, np.random.default_rng(0)))
        sets["lfw"] = conv(lfw(ood_dir))
    levels = np.random.default_rng(2).integers(0, 256, (n, c, 1, 1))
    sets["flat"] = np.broadcast_to(levels, (n, c, h, w)).astype(np.float32) / 255
    sets["noise"] = np.random.default_rng(3).integers(0, 256, (n, c, h, w)).astype(np.float32) / 255
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR", "data"))
    parser.add_argument("--ood-dir", default="/tmp/ood")
    parser.add_argument("--models", default=",".join(SERVED))
    parser.add_argument("--n", type=int, default=1000, help="images a side (grey models)")
    parser.add_argument("--n-colour", type=int, default=500, help="images per set for the colour model")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    data_dir, ood_dir = Path(args.data_dir), Path(args.ood_dir)
    results = []
    for ref in args.models.split(","):
        model_dir = Path("models") / ref
        images = held_out_images(model_dir, str(data_dir))
        _, evaluate = held_out_split(len(images), held_out_groups(model_dir, str(data_dir)))
        held = measure(model_dir, images[evaluate])
        colour = read_manifest(model_dir).image.channels == 3
        n = args.n_colour if colour else args.n
        sub = np.sort(np.random.default_rng(5).permutation(len(evaluate))[:n])
        p = held["p_values"]
        row: dict[str, Any] = {
            "model": ref, "statistic": held["statistic"], "in": len(sub), "fpr_n": len(evaluate),
            "fpr_05": None if p is None else float(np.mean(p <= 0.05)),
            "fpr_01": None if p is None else float(np.mean(p <= 0.01)),
            "extra_cost": held["seconds"]["novelty"] / held["seconds"]["reconstruct"],
            "us_per_image": {k: 1e6 * v / len(evaluate) for k, v in held["seconds"].items()}, "auroc": {},
        }  # fmt: skip
        for name, x in out_sets(model_dir, data_dir, ood_dir, n).items():
            out = measure(model_dir, x)
            row["auroc"][name] = {
                "n": len(x),
                "old": auroc(held["scores"][sub], out["scores"]),
                "new": auroc(held["novelty"][sub], out["novelty"]),
                "flagged_05": None if out["p_values"] is None else float(np.mean(out["p_values"] <= 0.05)),
            }
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
