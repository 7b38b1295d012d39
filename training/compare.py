"""The lecture's comparison as one command: PCA vs the deterministic autoencoder vs the VAE, on the same data
with the same latent size, scored by the test-set reconstruction error (mean squared error per pixel and
channel, images in [0, 1]; the VAE reconstructs from its posterior mean).

    python -m training.compare --datasets mnist fashion emoji --latent-dim 16 --epochs 5 --out runs/compare

writes `compare.md` (the table) and `compare.png` (per dataset: test images, then PCA, AE and VAE rows).
PCA is the linear, closed-form optimum of this error for its latent size; the autoencoder can beat it by
being non-linear; the VAE pays for a smooth, sampleable latent space (its KL term) with some of that error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import Dataset, TrainConfig
from training.data import load_dataset, to_float
from training.datasets.images import ImageDataset
from training.pca import fit_pca

log = logging.getLogger(__name__)
SHOWN = 8  # test images per dataset in the figure


def base_config(dataset: Dataset, latent_dim: int, epochs: int, data_dir: str, threads: int) -> TrainConfig:
    """The same conv network, optimiser and budget for the autoencoder and the VAE of one dataset."""
    return TrainConfig(
        dataset=dataset,
        data_dir=data_dir,
        image_size=32,
        channels=3,
        arch="conv",
        hidden_dims=(256,),
        latent_dim=latent_dim,
        activation="elu",
        likelihood="bernoulli",  # the lecture's cross-entropy on [0, 1] pixels, for both networks
        epochs=epochs,
        threads=threads,
        eval_every=epochs,
    )


@torch.no_grad()
def _reconstruct(model: Any, x: torch.Tensor) -> np.ndarray:
    model.eval()
    out = [model.decode(model.encode(x[i : i + 500])[0]) for i in range(0, len(x), 500)]
    return torch.cat(out).numpy()


def compare_dataset(
    dataset: ImageDataset, config: TrainConfig, run_dir: Path, train_limit: int = 0, test_limit: int = 0
) -> tuple[dict[str, Any], np.ndarray]:
    """Test MSE of PCA, AE and VAE on one dataset, and the figure rows (4 * SHOWN images)."""
    from training.train import train

    data = dataset.limited(train_limit, test_limit)
    x_train, x_test = to_float(data.x_train), to_float(data.x_test)
    row: dict[str, Any] = {"dataset": data.name, "train": len(x_train), "test": len(x_test)}
    tic = time.perf_counter()
    pca = fit_pca(x_train.flatten(1).numpy(), config.latent_dim)
    pca_recon = pca.decode(pca.encode(x_test.flatten(1).numpy())).reshape(x_test.shape).clip(0, 1)
    row["pca"] = float(np.mean((pca_recon - x_test.numpy()) ** 2))
    row["pca_seconds"] = round(time.perf_counter() - tic, 1)
    shown = [x_test[:SHOWN].numpy(), pca_recon[:SHOWN].astype(np.float32)]
    for key, variational in (("ae", False), ("vae", True)):
        cfg = replace(config, variational=variational)
        result = train(cfg, run_dir / f"{data.name}-{key}", dataset=data, progress=False)
        recon = _reconstruct(result.model, x_test)
        row[key] = float(np.mean((recon - x_test.numpy()) ** 2))
        row[f"{key}_seconds"] = round(result.seconds, 1)
        shown.append(recon[:SHOWN])
    return row, np.concatenate(shown)


def markdown_table(rows: list[dict[str, Any]], latent_dim: int, epochs: int) -> str:
    lines = [
        f"Test reconstruction error (MSE per pixel and channel, [0, 1] pixels), latent size {latent_dim}, "
        f"autoencoder and VAE trained {epochs} epochs with the same conv network:",
        "",
        "| dataset | train / test images | PCA | autoencoder | VAE (posterior mean) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        scores = " | ".join(f"{r[key]:.5f}" for key in ("pca", "ae", "vae"))
        lines.append(f"| {r['dataset']} | {r['train']} / {r['test']} | {scores} |")
    return "\n".join(lines) + "\n"


def save_figure(panels: list[tuple[str, np.ndarray]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vae_contract.imaging import make_grid

    fig, axes = plt.subplots(len(panels), 1, figsize=(SHOWN * 0.9, 4 * len(panels) * 0.95), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], panels, strict=True):
        grid = make_grid(images, columns=SHOWN).transpose(1, 2, 0)
        ax.imshow(grid[:, :, 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}: test images, PCA, autoencoder, VAE", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion", "emoji"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-limit", type=int, default=20000, help="first N training images (0 = all)")
    parser.add_argument("--test-limit", type=int, default=2000, help="first N test images (0 = all)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, panels = [], []
    for name in args.datasets:
        config = base_config(name, args.latent_dim, args.epochs, args.data_dir, args.threads)
        dataset = load_dataset(name, args.data_dir, config.image_size, config.channels)
        row, shown = compare_dataset(dataset, config, out, args.train_limit, args.test_limit)
        rows.append(row)
        panels.append((row["dataset"], shown))
        log.info("%s", row)
    table = markdown_table(rows, args.latent_dim, args.epochs)
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    save_figure(panels, out / "compare.png")
    print(table)
    return 0 if all(math.isfinite(r["vae"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
