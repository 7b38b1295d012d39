"""Short real training runs on slices of real MNIST: the loss goes down, the run folder is complete,
checkpoints carry their config, resume continues where a run stopped."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import TrainConfig
from training.evaluate import evaluate
from training.train import LAST_CHECKPOINT, eval_tensor, load_checkpoint, train


def test_test_loss_goes_down_and_run_folder_is_complete(trained_small):
    history = trained_small.history
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["test"]["neg_elbo"] < history[0]["test"]["neg_elbo"]
    assert history[1]["train"]["neg_elbo"] < history[0]["train"]["neg_elbo"]
    run = trained_small.run_dir
    for name in (
        "config.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "summary.json",
        "loss_curves.png",
        "reconstructions.png",
        "samples.png",
    ):
        assert (run / name).is_file(), name
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == history
    recon = Image.open(run / "reconstructions.png")
    assert recon.size == (16 * 30 + 2, 2 * 30 + 2)  # 16 originals over 16 reconstructions, 2 px padding
    samples = np.asarray(Image.open(run / "samples.png"), dtype=np.float32)
    assert samples.std() > 10  # digits, not a blank or constant grid


def test_checkpoint_carries_its_config_and_reproduces_the_model(trained_small, mnist):
    model, payload = load_checkpoint(trained_small.run_dir / LAST_CHECKPOINT)
    assert TrainConfig.from_dict(payload["config"]) == trained_small.model.config
    x = eval_tensor(mnist.limited(0, 50), model.config)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x)[0], trained_small.model.encode(x)[0])


def test_evaluation_is_deterministic_and_sane(trained_small, mnist):
    x = eval_tensor(mnist.limited(0, 200), trained_small.model.config)
    a = evaluate(trained_small.model, x, iwae_k=50, seed=4)
    b = evaluate(trained_small.model, x, iwae_k=50, seed=4)
    assert a == b
    assert a["neg_elbo"] == pytest.approx(a["reconstruction"] + a["kl"], abs=1e-3)
    assert a["iwae_nll"] <= a["neg_elbo"] + 0.5  # the IWAE bound is tighter than the ELBO
    assert 0 < a["active_units"] <= 8
    assert 0 < a["mse_per_pixel"] < 0.1


def test_resume_continues_the_same_run(mnist, tmp_path):
    base = dict(latent_dim=4, hidden_dims=(32,), train_limit=1000, test_limit=100, seed=5)
    straight = train(TrainConfig(epochs=2, **base), tmp_path / "straight", dataset=mnist, progress=False)
    run = tmp_path / "resumed"
    train(TrainConfig(epochs=1, **base), run, dataset=mnist, progress=False)
    # Resume needs the same config; only the epoch budget may grow.
    with pytest.raises(ValueError, match="different config"):
        train(TrainConfig(epochs=2, **{**base, "seed": 6}), run, dataset=mnist, progress=False, resume=True)
    resumed = train(TrainConfig(epochs=2, **base), run, dataset=mnist, progress=False, resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_two_dimensional_latent_writes_the_manifold(mnist, tmp_path):
    config = TrainConfig(
        arch="conv", latent_dim=2, hidden_dims=(32,), epochs=1, train_limit=500, test_limit=50
    )
    result = train(config, tmp_path, dataset=mnist, progress=False)
    manifold = Image.open(tmp_path / "manifold.png")
    assert manifold.size == (20 * 30 + 2, 20 * 30 + 2)
    assert result.final["examples"] == 50


def test_gaussian_likelihood_on_rgb_images(tmp_path):
    from training.data import ImageDataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 3, 32, 32), dtype=np.uint8)
    ds = ImageDataset("rgb", "synthetic", x[:32], np.full(32, -1), x[32:], np.full(8, -1))
    config = TrainConfig(
        arch="conv",
        likelihood="gaussian",
        gaussian_sigma=0.2,
        latent_dim=4,
        hidden_dims=(16,),
        epochs=1,
        batch_size=16,
    )
    result = train(config, tmp_path, dataset=ds, progress=False)
    assert result.model.image_shape == (3, 32, 32)
    assert np.isfinite(result.final["neg_elbo"])


def test_kl_warmup_and_cosine_schedule(mnist, tmp_path):
    config = TrainConfig(
        latent_dim=2,
        hidden_dims=(16,),
        epochs=2,
        train_limit=256,
        test_limit=32,
        kl_warmup_epochs=4,
        lr_schedule="cosine",
    )
    result = train(config, tmp_path, dataset=mnist, progress=False)
    betas = [row["beta"] for row in result.history]
    lrs = [row["lr"] for row in result.history]
    assert 0 < betas[0] < betas[1] < 1
    assert lrs[1] < lrs[0] < config.lr
