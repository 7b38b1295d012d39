"""Run-folder pictures: loss curves, reconstructions, prior samples, and the 2-D latent manifold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.models import VAE
from vae_contract.imaging import encode_png, make_grid
from vae_contract.latents import manifold_latents


def save_grid(images: np.ndarray, path: Path, columns: int | None = None) -> Path:
    """(N, C, H, W) floats in [0, 1] -> one PNG grid."""
    path.write_bytes(encode_png(make_grid(images, columns), compress_level=6))
    return path


def plot_loss_curves(history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(
        axes, ("neg_elbo", "reconstruction", "kl"), ("-ELBO", "reconstruction", "KL"), strict=True
    ):
        ax.plot(epochs, [row["train"][key] for row in history], label="train", marker="o")
        test = [(row["epoch"], row["test"][key]) for row in history if row.get("test")]
        if test:
            ax.plot([e for e, _ in test], [v for _, v in test], label="test", marker="s")
        ax.set_title(f"{title} (nats / image)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def save_run_pictures(model: VAE, x_test: torch.Tensor, run_dir: Path, seed: int = 0) -> list[Path]:
    """reconstructions.png (originals over reconstructions), samples.png, and manifold.png for 2-D latents."""
    model.eval()
    originals = x_test[:16]
    mean, _ = model.encode(originals)
    recon = model.decode(mean)
    pairs = torch.cat([originals, recon]).numpy()
    paths = [save_grid(pairs, run_dir / "reconstructions.png", columns=16)]
    z = torch.randn((64, model.latent_dim), generator=torch.Generator().manual_seed(seed))
    paths.append(save_grid(model.decode(z).numpy(), run_dir / "samples.png", columns=8))
    if model.latent_dim == 2:
        grid = torch.from_numpy(manifold_latents(20))
        paths.append(save_grid(model.decode(grid).numpy(), run_dir / "manifold.png", columns=20))
    return paths
