"""Long evaluations report progress: a log line every `every_s` seconds when stderr is not a terminal."""

from __future__ import annotations

import logging

import torch

from training.config import TrainConfig
from training.evaluate import evaluate
from training.models import build_model
from training.progress import Progress


def test_lines_report_count_share_and_time_left(caplog, monkeypatch):
    clock = iter([0.0, 10.0, 40.0, 45.0])
    monkeypatch.setattr("training.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="training"), Progress(200, "test set", every_s=30) as meter:
        meter.update(50)  # at 10 s: no line yet
        meter.update(50)  # at 40 s: 100 of 200 done in 40 s, 40 s left
        meter.update(100)  # at 45 s: within 30 s of the last line
    assert [r.getMessage() for r in caplog.records] == [
        "test set: 100/200 images (50%) in 40 s, about 40 s left"
    ]


def test_a_disabled_meter_is_silent(caplog):
    with caplog.at_level(logging.INFO, logger="training"), Progress(10, "x", every_s=0, enabled=False) as m:
        m.update(10)
    assert caplog.records == []


def test_evaluation_with_progress_counts_every_image_and_keeps_its_numbers(caplog):
    torch.manual_seed(0)
    model = build_model(TrainConfig(latent_dim=2, hidden_dims=(8,)), (1, 28, 28))
    x = torch.rand(30, 1, 28, 28).round()
    quiet = evaluate(model, x, batch_size=8, iwae_k=3)
    with caplog.at_level(logging.INFO, logger="training"):
        shown = evaluate(model, x, batch_size=8, iwae_k=3, show_progress=True)
    assert shown == quiet
