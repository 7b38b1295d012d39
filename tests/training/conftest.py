import pytest


@pytest.fixture(scope="session")
def trained_small(mnist, tmp_path_factory):
    """A small MLP VAE after two epochs on 5000 real MNIST digits (about two seconds on two cores)."""
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig(latent_dim=8, hidden_dims=(64,), epochs=2, train_limit=5000, test_limit=300, seed=11)
    return train(config, tmp_path_factory.mktemp("run-small"), dataset=mnist, progress=False)
