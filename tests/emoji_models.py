"""A tiny RGB model trained and exported by the project's own code from the real emoji in tests/fixtures/emoji
(16x16, a few seconds), for the tests that serve what training exports. Needs torch: callers skip without
it."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "emoji"


def fixture_dataset() -> Any:
    """The fixture emoji at 16x16 with their categories: six training images, two test images."""
    from training.datasets.emoji import CATEGORIES, composite_rgb, resize
    from training.datasets.images import ImageDataset

    images = np.stack([composite_rgb(p.read_bytes()) for p in sorted(FIXTURES.glob("*.png"))])
    x = resize(images, 16)
    labels = np.array([3, 1, 1, 0] * 2)
    return ImageDataset("emoji-16", "tests/fixtures/emoji", x[2:], labels[2:], x[:2], labels[:2], CATEGORIES)


def train_and_export(tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any) -> tuple[Path, Any]:
    """Train a discretized-logistic conv VAE with `options` over the small defaults below, export it as
    `name`/1 into a fresh models folder; return that folder and the trained model."""
    pytest.importorskip("torch")
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import train

    dataset = fixture_dataset()
    settings: dict[str, Any] = {
        "dataset": "emoji",
        "image_size": 16,
        "arch": "conv",
        "hidden_dims": (32,),
        "latent_dim": 4,
        "likelihood": "discretized_logistic",
        "mixture_components": 2,
        "epochs": 2,
        "batch_size": 4,
        "threads": 1,
    }
    config = TrainConfig(**(settings | options))
    root = tmp_path_factory.mktemp(f"{name}-models")
    result = train(config, tmp_path_factory.mktemp(f"{name}-run"), dataset=dataset, progress=False)
    export_run(result.model, dataset, result.final, root, name, measured_with="test")
    return root, result.model
