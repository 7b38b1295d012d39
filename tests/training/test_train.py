"""Short real training runs on slices of real MNIST: the loss goes down, the run folder is complete,
checkpoints carry their config, resume continues where a run stopped."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.checkpoints import LAST_CHECKPOINT, load_checkpoint
from training.config import TrainConfig
from training.errors import TrainingDiverged
from training.evaluate import eval_tensor, evaluate
from training.train import train


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
    # Resume needs the same config; only the epoch budget, device, lr and gradient clipping may change.
    with pytest.raises(ValueError, match=r"different options \(seed\)"):
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


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """40 crops of a real RGB photograph (Grace Hopper, shipped with matplotlib) as JPEG and PNG."""
    import matplotlib

    photo = Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("RGB")
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(40):
        side = int(rng.integers(96, 200))
        left, top = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
        crop = photo.crop((left, top, left + side, top + side))
        crop.save(folder / (f"crop{i}.jpg" if i % 2 else f"crop{i}.png"))
    return folder


def test_gaussian_rgb_vae_on_real_photos_trains_and_exports(photo_folder, tmp_path):
    from training.export import export_vae
    from vae_contract.manifest import DatasetSpec, verify_model_dir

    config = TrainConfig(
        dataset="folder",
        data_dir=str(photo_folder),
        image_size=32,
        channels=3,
        arch="conv",
        likelihood="gaussian",
        gaussian_sigma=0.1,
        latent_dim=8,
        hidden_dims=(64,),
        epochs=6,
        batch_size=8,
        lr=2e-3,
    )
    result = train(config, tmp_path / "run", progress=False)
    assert result.model.image_shape == (3, 32, 32)
    train_losses = [row["train"]["neg_elbo"] for row in result.history]
    assert train_losses[-1] < train_losses[0]
    spec = DatasetSpec(name="photos", source=str(photo_folder), train_examples=36, test_examples=4)
    version = export_vae(result.model, tmp_path / "models", "photos", dataset=spec)
    manifest = verify_model_dir(version)
    assert (
        manifest.image.channels == 3 and manifest.likelihood == "gaussian" and manifest.gaussian_sigma == 0.1
    )
    samples = Image.open(tmp_path / "run" / "samples.png")
    assert samples.mode == "RGB"


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


def _tiny(**overrides):
    return TrainConfig(
        **{"latent_dim": 2, "hidden_dims": (16,), "train_limit": 256, "test_limit": 32, "batch_size": 32}
        | overrides
    )


def test_divergence_stops_before_a_non_finite_checkpoint_and_resume_recovers(mnist, tmp_path):
    good = train(_tiny(epochs=1), tmp_path, dataset=mnist, progress=False)
    last = tmp_path / LAST_CHECKPOINT
    saved = last.read_bytes()
    with pytest.raises(TrainingDiverged, match="non-finite") as info:
        train(_tiny(epochs=3, lr=1e6), tmp_path, dataset=mnist, progress=False, resume=True)
    message = str(info.value)
    assert f"{last} still holds epoch 1" in message
    assert "--resume" in message and "--lr" in message and "--grad-clip" in message
    assert last.read_bytes() == saved  # the last good checkpoint, untouched
    model, _ = load_checkpoint(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in logged] == [1]
    # The way out the message names: resume the same run with a lower lr and clipping.
    resumed = train(_tiny(epochs=2, grad_clip=1.0), tmp_path, dataset=mnist, progress=False, resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.history[0] == good.history[0]


def test_non_finite_gradients_with_clipping_stop_the_run(mnist, tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def poisoned(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return norm * float("inf") if len(calls) == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    with pytest.raises(TrainingDiverged, match="the gradient norm became non-finite at epoch 1 step 2"):
        train(_tiny(epochs=1, grad_clip=1.0), tmp_path, dataset=mnist, progress=False)
    assert not (tmp_path / LAST_CHECKPOINT).exists() and not (tmp_path / "best.pt").exists()


def test_resume_without_a_checkpoint_changes_nothing(mnist, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep")
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        train(_tiny(epochs=1), run, dataset=mnist, progress=False, resume=True)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    with pytest.raises(FileNotFoundError):
        train(_tiny(epochs=1), tmp_path / "missing", dataset=mnist, progress=False, resume=True)
    assert not (tmp_path / "missing").exists()


def test_init_from_starts_from_a_checkpoints_weights_with_other_loss_options(mnist, tmp_path):
    source = train(_tiny(epochs=1), tmp_path / "source", dataset=mnist, progress=False)
    checkpoint = str(tmp_path / "source" / LAST_CHECKPOINT)
    # A learning rate too small to move anything: the run ends where it started, at the source's weights.
    tuned = train(
        _tiny(epochs=1, lr=1e-12, free_bits=0.5, init_from=checkpoint),
        tmp_path / "tuned",
        dataset=mnist,
        progress=False,
    )
    for p, q in zip(source.model.parameters(), tuned.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    fresh = train(_tiny(epochs=1, lr=1e-12), tmp_path / "fresh", dataset=mnist, progress=False)
    assert not torch.equal(next(fresh.model.parameters()), next(source.model.parameters()))
    with pytest.raises(ValueError, match="architecture differs"):
        train(_tiny(latent_dim=3, init_from=checkpoint), tmp_path / "x", dataset=mnist, progress=False)
