from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_small(mnist, tmp_path_factory):
    """A small MLP VAE after two epochs on 5000 real MNIST digits (about two seconds on two cores)."""
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig(latent_dim=8, hidden_dims=(64,), epochs=2, train_limit=5000, test_limit=300, seed=11)
    return train(config, tmp_path_factory.mktemp("run-small"), dataset=mnist, progress=False)


def _train_and_export(
    mnist, models_dir: Path, run_dir: Path, name: str, latent_dim: int, epochs: int
) -> Path:
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import train

    config = TrainConfig(
        latent_dim=latent_dim,
        hidden_dims=(128,),
        epochs=epochs,
        train_limit=6000,
        test_limit=500,
        seed=3,
        threads=2,
    )
    result = train(config, run_dir, dataset=mnist, progress=False)
    trained_on = mnist.limited(config.train_limit, config.test_limit)
    target, _ = export_run(
        result.model, trained_on, result.final, models_dir, name, measured_with="tests/training/conftest.py"
    )
    return target


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, mnist) -> Path:
    """Replaces tests/conftest.py's fitted models for the training tests: `tiny/1` (latent 8) and `tiny-2d/1`
    (latent 2), MLP VAEs trained on real MNIST and exported by training.export, as `make train` would.

    Treat it as read-only: tests that modify a model copy it first (`model_copy` in tests/conftest.py).
    """
    root = tmp_path_factory.mktemp("models")
    runs = tmp_path_factory.mktemp("runs")
    _train_and_export(mnist, root, runs / "tiny", "tiny", latent_dim=8, epochs=3)
    _train_and_export(mnist, root, runs / "tiny-2d", "tiny-2d", latent_dim=2, epochs=3)
    return root
