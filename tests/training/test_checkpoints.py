"""Checkpoints: one clear error for anything that is not one, and a failed write that keeps the last one."""

import errno
from pathlib import Path

import pytest
import torch

from training import checkpoints
from training.checkpoints import LAST_CHECKPOINT, load_checkpoint
from training.config import TrainConfig
from training.models import build_model

pytestmark = pytest.mark.timeout(30)


def test_foreign_or_broken_checkpoints_are_one_clear_error(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a checkpoint written by `python -m training train`"):
        load_checkpoint(foreign)
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    config = TrainConfig(latent_dim=4, hidden_dims=(16,))
    model = build_model(config, (1, 28, 28))
    path = tmp_path / LAST_CHECKPOINT
    checkpoints.save_checkpoint(path, model, config, epoch=1)
    before = path.read_bytes()

    def disk_full(payload, target):
        Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint(path, model, config, epoch=2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [LAST_CHECKPOINT]
