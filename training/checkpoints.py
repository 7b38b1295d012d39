"""Checkpoints that carry their config (as nanoGPT's do): written atomically, read back into a model in eval
mode with one clear error for anything that is not one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.models import VAE, build_model

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


def save_checkpoint(path: Path, model: VAE, config: TrainConfig, **extra: Any) -> None:
    payload = {
        "config": config.to_dict(),
        "image_shape": list(model.image_shape),
        "model": model.state_dict(),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)  # atomic: an interrupted save never corrupts the previous checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: no half-written file beside the good checkpoint
        raise


def load_checkpoint(path: Path) -> tuple[VAE, dict[str, Any]]:
    """The model rebuilt from the config stored beside its weights, in eval mode, plus the raw payload."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    # torch raises many types for corrupt files, and a foreign file lacks our keys or has other tensors:
    # one clear message is what users need.
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    try:
        config = TrainConfig.from_dict(payload["config"])
        model = build_model(config, tuple(payload["image_shape"]))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a checkpoint written by `python -m training train` ({exc!r})") from exc
    model.eval()
    return model, payload
