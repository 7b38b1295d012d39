"""Test-set evaluation: ELBO and its two terms, the IWAE log-likelihood bound, active units, and
reconstruction error.

Deterministic under `seed`: the posterior samples come from a private generator, so two evaluations of the
same model on the same data report the same numbers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from training.checkpoints import load_checkpoint
from training.config import TrainConfig
from training.data import binarize_once, iterate_batches, load_dataset, to_float
from training.datasets.images import ImageDataset
from training.losses import elbo_terms, iwae_bound
from training.models import VAE
from training.progress import Progress

# Burda et al. (2016), section 5.2: a latent unit is active when Cov_x(E_q[z_u | x]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01


# With --binarize the test set is binarized once with this seed, so every run is scored on the same bits.
TEST_BINARIZE_SEED = 0


def eval_tensor(dataset: ImageDataset, config: TrainConfig) -> torch.Tensor:
    x = to_float(dataset.x_test)
    return binarize_once(x, TEST_BINARIZE_SEED) if config.binarize else x


@torch.no_grad()
def evaluate(
    model: VAE,
    x: torch.Tensor,
    batch_size: int = 500,
    iwae_k: int = 0,
    iwae_chunk: int = 100,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Averages per image over `x` (float, already binarized if the protocol says so), in nats.

    `show_progress`: a bar on a terminal, a log line every 30 s otherwise (the IWAE bound at k = 1000 takes
    minutes on a CPU)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    totals = {"neg_elbo": 0.0, "reconstruction": 0.0, "kl": 0.0, "mse": 0.0, "iwae": 0.0}
    means = []
    # IWAE batches shrink so that batch * chunk decoder outputs stay around 50k MNIST images' worth of values
    # at a time (a colour mixture decoder emits 45x more values per image than a 28x28 Bernoulli one).
    out_values = model.decode_logits(torch.zeros(1, model.latent_dim, device=x.device)).numel()
    budget = 50_000 * 784 // max(1, out_values)
    iwae_batch = max(1, min(batch_size, budget // max(1, min(iwae_k, iwae_chunk))))
    what = f"test set, ELBO and IWAE k={iwae_k}" if iwae_k > 0 else "test set, ELBO"
    with Progress(x.shape[0], what, enabled=show_progress) as meter:
        for batch in iterate_batches(x, batch_size, shuffle=False):
            terms = elbo_terms(model, batch, generator)
            for key in ("neg_elbo", "reconstruction", "kl"):
                totals[key] += float(terms[key].sum())
            mean = terms["mean"]  # the encoder's, already computed for the ELBO
            means.append(mean)
            totals["mse"] += float((model.decode(mean) - batch).pow(2).flatten(1).mean(1).sum())
            if iwae_k > 0:
                for sub in iterate_batches(batch, iwae_batch, shuffle=False):
                    totals["iwae"] += float(iwae_bound(model, sub, iwae_k, iwae_chunk, generator).sum())
                    meter.update(sub.shape[0])
            else:
                meter.update(batch.shape[0])
    n = x.shape[0]
    all_means = torch.cat(means)
    activity = all_means.var(dim=0, unbiased=False) if n > 1 else torch.zeros_like(all_means[0])
    model.train(was_training)
    result: dict[str, Any] = {
        "examples": n,
        "neg_elbo": totals["neg_elbo"] / n,
        "reconstruction": totals["reconstruction"] / n,
        "kl": totals["kl"] / n,
        "mse_per_pixel": totals["mse"] / n,
        "active_units": int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
    }
    if iwae_k > 0:
        result["iwae_nll"] = -totals["iwae"] / n
        result["iwae_k"] = iwae_k
    return {
        key: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for key, v in result.items()
    }


def evaluation_data(config: TrainConfig, data_dir: str | None = None, limit: int = 0) -> ImageDataset:
    """The dataset a checkpoint was trained on, with its limits (`limit` > 0 narrows the test set)."""
    return load_dataset(
        config.dataset, data_dir or config.data_dir, config.image_size, config.channels
    ).limited(config.train_limit, limit or config.test_limit)


def measure_checkpoint(
    checkpoint: Path, data_dir: str | None, k: int, limit: int = 0, device: str = "auto"
) -> tuple[VAE, ImageDataset, dict[str, Any]]:
    """Evaluate a checkpoint on its test set; the result also says on which device and in how many seconds."""
    model, _ = load_checkpoint(Path(checkpoint))
    dataset = evaluation_data(model.config, data_dir, limit)
    target = resolve_device(device)
    tic = time.perf_counter()
    x = eval_tensor(dataset, model.config).to(target)
    result = evaluate(model.to(target), x, iwae_k=k, show_progress=True)
    result["seconds"] = round(time.perf_counter() - tic, 1)
    result["device"] = target
    return model.cpu(), dataset, result


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
