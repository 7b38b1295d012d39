"""The training loop: Adam on the (beta-weighted) negative ELBO or the IWAE bound, per-epoch test evaluation,
checkpoints that carry their config, resume, and a run folder with metrics.jsonl, config.json and plots.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import iterate_batches, load_dataset, to_float
from training.datasets.images import ImageDataset
from training.distributed import Replica, all_sum, device_for, wrap
from training.distributed import start as distributed_start
from training.distributed import stop as distributed_stop
from training.errors import TrainingDiverged
from training.evaluate import eval_tensor, evaluate
from training.models import VAE, build_model, count_parameters

log = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"


# Only these options may differ on --resume: the epoch budget, the device, the two knobs that recover
# a run that diverged (a lower learning rate, gradient clipping), and the objective, so that a run can finish
# on the IWAE bound at small k after ELBO epochs (the architecture, data and prior stay the checkpoint's).
RESUMABLE_CHANGES = ("epochs", "device", "lr", "grad_clip", "objective", "train_k")


@dataclass
class TrainResult:
    model: VAE
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One device sync for the lot, not one per tensor."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _diverged(
    what: str, where: str, config: TrainConfig, last_path: Path, last_epoch: int
) -> TrainingDiverged:
    if last_epoch > 0:
        saved = (
            f"{last_path} still holds epoch {last_epoch}, the last good one; continue from it with the same "
            f"options plus --resume and a lower --lr (now {config.lr:g}) and/or --grad-clip 1"
        )
    else:
        saved = (
            "No checkpoint was written (no epoch finished); start over with a lower "
            f"--lr (now {config.lr:g}) and/or --grad-clip 1"
        )
    return TrainingDiverged(f"training diverged: {what} became non-finite {where}. {saved}")


def _beta_at(config: TrainConfig, epoch_progress: float) -> float:
    if config.kl_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch_progress / config.kl_warmup_epochs)


def _lr_at(config: TrainConfig, epoch_progress: float) -> float:
    if config.lr_schedule == "none":
        return config.lr
    t = min(1.0, epoch_progress / config.epochs)
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * t))


def train(
    config: TrainConfig,
    run_dir: Path,
    dataset: ImageDataset | None = None,
    resume: bool = False,
    progress: bool = True,
    distributed: bool = False,
) -> TrainResult:
    """Train `config` into `run_dir`; with `distributed`, this process is one torchrun replica."""
    config.validated()
    replica = distributed_start(config.torch_device()) if distributed else Replica()
    try:
        return _train(config, Path(run_dir), dataset, resume, progress and replica.is_main, replica)
    finally:
        if distributed:
            distributed_stop()


@dataclass
class _Run:
    """What one training run carries from epoch to epoch."""

    config: TrainConfig
    run_dir: Path
    replica: Replica
    model: VAE
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # shuffling and binarization
    noise: torch.Generator  # the posterior samples
    x_train: torch.Tensor
    x_test: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 1
    best: float = math.inf

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_CHECKPOINT


def _train(
    config: TrainConfig,
    run_dir: Path,
    dataset: ImageDataset | None,
    resume: bool,
    progress: bool,
    replica: Replica,
) -> TrainResult:
    run, dataset = _set_up(config, run_dir, dataset, resume, replica)
    step_module = wrap(run.model, replica)
    began = time.perf_counter()
    for epoch in range(run.start_epoch, config.epochs + 1):
        sums, seen, seconds, beta = _train_epoch(run, step_module, epoch, progress)
        if replica.is_main:
            _record_epoch(run, epoch, sums, seen, seconds, beta, progress)
    result = TrainResult(
        model=run.model, run_dir=run_dir, history=run.history, seconds=time.perf_counter() - began
    )
    run.model.eval()
    if replica.is_main:
        _finish(run, result, dataset)
    return result


def _set_up(
    config: TrainConfig, run_dir: Path, dataset: ImageDataset | None, resume: bool, replica: Replica
) -> tuple[_Run, ImageDataset]:
    """The data, model, optimizer and generators of a new run, or of the run `--resume` continues."""
    last_path = run_dir / LAST_CHECKPOINT
    if resume and not last_path.is_file():
        # Checked before anything is written: starting over here would overwrite the run being resumed.
        raise FileNotFoundError(
            f"--resume: no checkpoint {last_path}; drop --resume to start a new run there, or check --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir, config.image_size, config.channels)
    dataset = dataset.limited(config.train_limit, config.test_limit)
    device = device_for(replica, config.torch_device())
    x_train, x_test = to_float(dataset.x_train).to(device), eval_tensor(dataset, config).to(device)

    torch.manual_seed(config.seed)
    model = build_model(config, dataset.image_shape)
    if config.init_from and not resume:
        _load_initial_weights(model, config.init_from)
    model = model.to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    # Posterior noise: the shared generator on one process, one generator per replica otherwise.
    noise = (
        generator
        if replica.world == 1
        else torch.Generator(device=device).manual_seed(config.seed + replica.rank)
    )
    run = _Run(
        config, run_dir, replica, model, torch.optim.Adam(model.parameters(), lr=config.lr), generator, noise,
        x_train, x_test,
    )  # fmt: skip
    if resume:
        _resume(run, device)
    if replica.is_main:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log.info(
        "%s VAE, %d parameters, %d train / %d test images of %s",
        config.arch,
        count_parameters(run.model),
        len(x_train),
        len(x_test),
        dataset.image_shape,
    )
    return run, dataset


def _load_initial_weights(model: VAE, source: str) -> None:
    """Start from trained weights (a checkpoint, or a published version rebuilt from its graphs, since
    checkpoints stay outside the repository) rather than a random init: fine-tuning under other loss
    options. The optimizer, schedule and epochs start afresh."""
    path = Path(source)
    if path.is_dir():
        from training.onnx_weights import rebuild

        start, _ = rebuild(path)
    else:
        start, _ = load_checkpoint(path)
    try:
        model.load_state_dict(start.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"--init-from {source}: its architecture differs from this run's ({exc})") from exc
    log.info("weights from %s", source)


def _resume(run: _Run, device: torch.device) -> None:
    """Continue from the run's last checkpoint: its weights, optimizer, generators, epoch and history."""
    config, last_path = run.config, run.last_path
    model, payload = load_checkpoint(last_path)
    run.model = model.to(device)
    saved = TrainConfig.from_dict(payload["config"])
    allowed = {name: getattr(config, name) for name in RESUMABLE_CHANGES}
    if replace(saved, **allowed) != config:
        before = saved.to_dict()
        changed = sorted(
            k for k, v in config.to_dict().items() if before[k] != v and k not in RESUMABLE_CHANGES
        )
        raise ValueError(
            f"{last_path} was trained with different options ({', '.join(changed)}); on --resume only "
            f"{', '.join(RESUMABLE_CHANGES)} may change"
        )
    run.optimizer = torch.optim.Adam(run.model.parameters(), lr=config.lr)
    run.optimizer.load_state_dict(payload["optimizer"])
    run.generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    run.start_epoch, run.best = payload["epoch"] + 1, payload["best"]
    run.history = json.loads(payload["history"])
    log.info("resumed %s at epoch %d", last_path, run.start_epoch)


def _train_epoch(
    run: _Run, step_module: torch.nn.Module, epoch: int, progress: bool
) -> tuple[dict[str, float], int, float, float]:
    """One pass over the training images; returns the summed terms over every replica, the images seen, the
    seconds it took and the KL weight at its end."""
    config, model, optimizer, replica = run.config, run.model, run.optimizer, run.replica
    steps_per_epoch = math.ceil(len(run.x_train) / config.batch_size)
    model.train()
    sums = {"neg_elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    seen, tic, beta = 0, time.perf_counter(), config.beta
    batches = iterate_batches(
        run.x_train, config.batch_size, True, run.generator, config.binarize, config.hflip
    )
    bar = tqdm(
        batches,
        total=steps_per_epoch,
        desc=f"epoch {epoch}/{config.epochs}",
        disable=not progress,
        leave=False,
        mininterval=0.5,
    )
    for step, global_batch in enumerate(bar):
        batch = replica.shard(global_batch)
        position = epoch - 1 + step / steps_per_epoch
        beta = _beta_at(config, position)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, position)
        loss, terms = step_module(batch, beta, run.noise)
        # One transfer per step (the running sums need it anyway); a non-finite loss stops the run before
        # its gradients reach the weights.
        values = torch.stack([loss.detach(), *(terms[key].sum() for key in sums)]).tolist()
        if not all(math.isfinite(v) for v in values):
            raise _diverged("the loss", f"at epoch {epoch} step {step}", config, run.last_path, epoch - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if not math.isfinite(float(norm)):
                raise _diverged(
                    "the gradient norm", f"at epoch {epoch} step {step}", config, run.last_path, epoch - 1
                )
        optimizer.step()
        for key, value in zip(sums, values[1:], strict=True):
            sums[key] += value
        seen += batch.shape[0]
        if step % 20 == 0:
            rate = seen / max(time.perf_counter() - tic, 1e-9)
            bar.set_postfix(
                loss=f"{sums['neg_elbo'] / seen:.2f}",
                kl=f"{sums['kl'] / seen:.2f}",
                recon=f"{sums['reconstruction'] / seen:.2f}",
                samples_s=f"{rate:.0f}",
            )
    seconds = time.perf_counter() - tic
    # Gradients that were non-finite at the last step of the epoch only show in the weights: checked
    # here, before anything of this epoch is logged or saved.
    if not _all_finite([p.detach() for p in model.parameters()]):
        raise _diverged("the weights", f"during epoch {epoch}", config, run.last_path, epoch - 1)
    *totals, seen_all = all_sum([*sums.values(), float(seen)], replica, run.x_train.device)
    return dict(zip(sums, totals, strict=True)), int(seen_all), seconds, beta


def _record_epoch(
    run: _Run, epoch: int, sums: dict[str, float], seen: int, seconds: float, beta: float, progress: bool
) -> None:
    """The epoch's test evaluation (when due), its line in metrics.jsonl and the log, and its checkpoints."""
    config = run.config
    row: dict[str, Any] = {
        "epoch": epoch,
        "train": {key: round(value / seen, 4) for key, value in sums.items()},
        "seconds": round(seconds, 3),
        "samples_per_second": round(seen / seconds, 1),
        "beta": beta,
        "lr": run.optimizer.param_groups[0]["lr"],
    }
    if epoch % config.eval_every == 0 or epoch == config.epochs:
        row["test"] = evaluate(run.model, run.x_test, config.eval_batch_size, seed=config.seed)
        if not math.isfinite(row["test"]["neg_elbo"]):
            raise _diverged("the test loss", f"after epoch {epoch}", config, run.last_path, epoch - 1)
    run.history.append(row)
    with (run.run_dir / METRICS_LOG).open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    test_msg = f" test -ELBO {row['test']['neg_elbo']:.2f}" if "test" in row else ""
    log.info(
        "epoch %d: train -ELBO %.2f%s (%.1fs, %.0f samples/s)",
        epoch,
        row["train"]["neg_elbo"],
        test_msg,
        seconds,
        row["samples_per_second"],
    )
    if progress:
        tqdm.write(
            f"epoch {epoch}: train -ELBO {row['train']['neg_elbo']:.2f}{test_msg} "
            f"({seconds:.1f}s, {row['samples_per_second']:.0f} samples/s)"
        )
    state = {
        "optimizer": run.optimizer.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "history": json.dumps(run.history),
    }
    if "test" in row and row["test"]["neg_elbo"] < run.best:
        run.best = row["test"]["neg_elbo"]
        save_checkpoint(run.run_dir / BEST_CHECKPOINT, run.model, config, best=run.best, **state)
    save_checkpoint(run.last_path, run.model, config, best=run.best, **state)


def _finish(run: _Run, result: TrainResult, dataset: ImageDataset) -> None:
    """The final evaluation (with the IWAE bound), summary.json and the run's pictures."""
    config = run.config
    result.final = evaluate(
        run.model, run.x_test, config.eval_batch_size, iwae_k=config.eval_k, seed=config.seed
    )
    (run.run_dir / "summary.json").write_text(
        json.dumps(
            {
                "final_test": result.final,
                "dataset": dataset.source,
                "train_seconds": round(result.seconds, 1),
            },
            indent=2,
        )
        + "\n"
    )
    from training.plots import plot_loss_curves, save_run_pictures

    if run.history:
        plot_loss_curves(run.history, run.run_dir / "loss_curves.png")
    save_run_pictures(run.model.cpu(), run.x_test.cpu(), run.run_dir, seed=config.seed)
