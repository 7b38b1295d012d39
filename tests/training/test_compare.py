"""The PCA / autoencoder / VAE comparison on a few real MNIST digits: a row, a table, a figure."""

import numpy as np
import pytest

from training.compare import base_config, compare_dataset, markdown_table, save_figure

pytestmark = pytest.mark.timeout(120)


def test_compare_on_real_digits(mnist, tmp_path):
    config = base_config("mnist", latent_dim=4, epochs=1, data_dir="unused", threads=1)
    row, shown = compare_dataset(mnist, config, tmp_path, train_limit=512, test_limit=64)
    assert row["train"] == 512 and row["test"] == 64
    # PCA with 4 axes beats predicting the mean image, and every error is a mean square of [0, 1] values.
    x = mnist.x_test[:64].astype(np.float64) / 255
    assert row["pca"] < np.mean((x - mnist.x_train[:512].mean(0) / 255) ** 2)
    assert all(0 < row[key] < 1 for key in ("pca", "ae", "vae"))
    assert shown.shape == (4 * 8, 1, 28, 28)
    table = markdown_table([row], 4, 1)
    assert "| mnist | 512 / 64 |" in table
    assert save_figure([("mnist", shown)], tmp_path / "compare.png").stat().st_size > 1000
