"""The VampPrior: its log-density against a hand computation, the ELBO's Monte-Carlo KL, the IWAE bound under
it (exact when q equals the prior), training and checkpoints with it, and its export as a mixture file whose
parameters the ONNX encoder reproduces."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.config import TrainConfig
from training.datasets.images import ImageDataset
from training.gaussians import gaussian_log_density, mixture_log_density
from training.losses import elbo_terms, iwae_bound, log_prior, reconstruction_nll
from training.models import build_model
from vae_contract.manifest import ManifestError, verify_model_dir
from vae_contract.priors import PRIOR_FILE, read_mixture

pytestmark = pytest.mark.timeout(120)

SHAPE = (1, 8, 8)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(a - top).sum(axis=axis))


def _hand_mixture(z: np.ndarray, means: np.ndarray, log_vars: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log sum_k w_k prod_d N(z_d; m_kd, v_kd), one component and one unit at a time."""
    out = []
    for row in z:
        per = []
        for k in range(len(means)):
            log_n = 0.0
            for d in range(len(row)):
                var = math.exp(log_vars[k, d])
                log_n += -0.5 * math.log(2 * math.pi * var) - (row[d] - means[k, d]) ** 2 / (2 * var)
            per.append(math.log(weights[k]) + log_n)
        out.append(per)
    return _logsumexp(np.array(out), axis=1)


def _vamp_model(components: int = 5, latent_dim: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = TrainConfig(latent_dim=latent_dim, hidden_dims=(16,), prior="vamp", vamp_components=components)
    return build_model(config, SHAPE).eval()


def test_mixture_log_density_matches_hand_computation():
    rng = np.random.default_rng(0)
    k, d = 4, 3
    means, log_vars = rng.normal(size=(k, d)) * 2, rng.normal(size=(k, d))
    weights = rng.dirichlet(np.ones(k))
    z = rng.normal(size=(6, d)) * 3
    got = mixture_log_density(
        torch.from_numpy(z),
        torch.from_numpy(means),
        torch.from_numpy(log_vars),
        torch.log(torch.tensor(weights)),
    )
    np.testing.assert_allclose(got.numpy(), _hand_mixture(z, means, log_vars, weights), rtol=1e-10)
    # Leading axes are kept: (k, B, D) samples as in the IWAE bound.
    stacked = mixture_log_density(
        torch.from_numpy(z).view(2, 3, d),
        torch.from_numpy(means),
        torch.from_numpy(log_vars),
        torch.log(torch.tensor(weights)),
    )
    np.testing.assert_allclose(stacked.reshape(-1).numpy(), got.numpy(), rtol=1e-12)


def test_vamp_log_prior_is_the_uniform_mixture_of_posteriors_at_the_pseudo_inputs():
    model = _vamp_model().double()
    z = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        means, log_vars = model.encode(model.prior.inputs())
        got = log_prior(model, z).numpy()
    weights = np.full(5, 1 / 5)
    np.testing.assert_allclose(
        got, _hand_mixture(z.numpy(), means.numpy(), log_vars.numpy(), weights), rtol=1e-9
    )
    # The pseudo-inputs stay in the pixel range, whatever the optimiser does to the raw parameters.
    model.prior.pseudo_inputs.data.fill_(3.0)
    assert float(model.prior.inputs().detach().max()) == 1.0


def test_standard_prior_is_unchanged():
    config = TrainConfig(latent_dim=3, hidden_dims=(16,))
    model = build_model(config, SHAPE)
    assert model.prior is None and model.prior_components() is None
    z = torch.randn(5, 3)
    assert torch.equal(log_prior(model, z), gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)))


def test_elbo_kl_is_the_one_sample_estimate_under_a_learned_prior():
    model = _vamp_model().double()
    x = torch.rand(4, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        terms = elbo_terms(model, x, torch.Generator().manual_seed(3))
        _, mean, log_var, z = model(x, torch.Generator().manual_seed(3))
        log_q = gaussian_log_density(z, mean, log_var)
        expected = log_q - log_prior(model, z)
    torch.testing.assert_close(terms["kl"], expected)
    torch.testing.assert_close(terms["neg_elbo"], terms["reconstruction"] + expected)


def _degenerate(components: int):
    """q(z|x) = every component of the prior = N(1.5, exp(-1)) for every x, and a decoder that ignores z:
    then p(z) = q(z|x) exactly and log p(x) = log p(x|z) for any z, which every IWAE bound must return."""
    model = _vamp_model(components).double()
    with torch.no_grad():
        for layer in (model.to_mean, model.to_log_var, model.decoder_body[1]):
            layer.weight.zero_()
        model.to_mean.bias.fill_(1.5)
        model.to_log_var.bias.fill_(-1.0)
    return model


@pytest.mark.parametrize("components", [1, 4])
def test_iwae_bound_is_exact_when_q_equals_the_prior(components):
    model = _degenerate(components)
    x = (torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(4)) > 0.5).double()
    with torch.no_grad():
        logits = model.decode_logits(torch.zeros(1, 3, dtype=torch.float64)).expand(5, *SHAPE)
        log_px = -reconstruction_nll(logits, x, "bernoulli")
        for k in (1, 50):
            bound = iwae_bound(model, x, k, chunk=20, generator=torch.Generator().manual_seed(k))
            torch.testing.assert_close(bound, log_px, rtol=0, atol=1e-9)
        kl = elbo_terms(model, x, torch.Generator().manual_seed(5))["kl"]
    torch.testing.assert_close(kl, torch.zeros_like(kl), rtol=0, atol=1e-9)
    # Against N(0, I) the same posterior is not the prior: the bound is strictly lower.
    model.prior = None
    with torch.no_grad():
        assert bool(
            (iwae_bound(model, x, 50, generator=torch.Generator().manual_seed(6)) < log_px - 0.1).all()
        )


def _dataset(n_train: int = 256, n_test: int = 64) -> ImageDataset:
    rng = np.random.default_rng(0)
    pixels = (rng.random((n_train + n_test, *SHAPE)) > 0.6).astype(np.uint8) * 255
    labels = np.full(n_train + n_test, -1)
    return ImageDataset(
        "random", "tests", pixels[:n_train], labels[:n_train], pixels[n_train:], labels[n_train:]
    )


@pytest.fixture(scope="module")
def trained_vamp(tmp_path_factory):
    from training.train import train

    config = TrainConfig(
        latent_dim=3, hidden_dims=(16,), prior="vamp", vamp_components=6, epochs=2, batch_size=64, seed=2
    )
    return train(config, tmp_path_factory.mktemp("vamp-run"), dataset=_dataset(), progress=False)


def test_training_moves_the_pseudo_inputs_and_checkpoints_them(trained_vamp):
    from training.checkpoints import LAST_CHECKPOINT, load_checkpoint

    torch.manual_seed(trained_vamp.model.config.seed)
    fresh = build_model(trained_vamp.model.config, SHAPE)
    assert not torch.equal(fresh.prior.pseudo_inputs, trained_vamp.model.prior.pseudo_inputs)
    reloaded, _ = load_checkpoint(trained_vamp.run_dir / LAST_CHECKPOINT)
    torch.testing.assert_close(reloaded.prior.pseudo_inputs, trained_vamp.model.prior.pseudo_inputs)
    final = trained_vamp.final
    assert math.isfinite(final["neg_elbo"]) and final["kl"] > 0


def test_iwae_training_objective_runs_under_a_learned_prior(tmp_path):
    from training.train import train

    config = TrainConfig(
        latent_dim=3,
        hidden_dims=(16,),
        prior="vamp",
        vamp_components=4,
        objective="iwae",
        train_k=3,
        epochs=1,
        batch_size=64,
    )
    result = train(config, tmp_path, dataset=_dataset(128, 32), progress=False)
    assert math.isfinite(result.history[-1]["train"]["kl"])


def test_config_refuses_a_learned_prior_without_a_posterior():
    with pytest.raises(ValueError, match="needs a variational model"):
        TrainConfig(prior="vamp", variational=False).validated()
    with pytest.raises(ValueError, match="vamp_components must be >= 1"):
        TrainConfig(prior="vamp", vamp_components=0).validated()
    with pytest.raises(ValueError, match="prior must be one of standard, vamp"):
        TrainConfig.from_dict({"prior": "flow"})


@pytest.fixture(scope="module")
def exported_vamp(trained_vamp, tmp_path_factory):
    from training.export import export_run

    dataset = _dataset()
    target, _ = export_run(
        trained_vamp.model,
        dataset,
        trained_vamp.final,
        tmp_path_factory.mktemp("models"),
        "vamp",
        measured_with="t",
    )
    return target


def test_export_ships_the_mixture_and_the_onnx_encoder_reproduces_it(exported_vamp, trained_vamp):
    model = trained_vamp.model.cpu().eval()
    manifest = verify_model_dir(exported_vamp)
    assert manifest.prior is not None and manifest.prior.kind == "mixture_of_gaussians"
    assert manifest.prior.components == 6 and manifest.prior.file == PRIOR_FILE
    assert manifest.parity["prior_max_abs_diff"] <= 1e-4
    mixture = read_mixture(exported_vamp / PRIOR_FILE, 6, 3)
    np.testing.assert_allclose(mixture.weights, np.full(6, 1 / 6))
    with torch.no_grad():
        means, log_vars, _ = model.prior_components()
        pseudo = model.prior.inputs().numpy()
    np.testing.assert_array_equal(mixture.means, means.numpy())
    np.testing.assert_array_equal(mixture.log_vars, log_vars.numpy())
    # The graph the service runs, at the pseudo-inputs, gives the file's components.
    session = ort.InferenceSession(exported_vamp / "encoder.onnx", providers=["CPUExecutionProvider"])
    onnx_mean, onnx_log_var = session.run(None, {"x": pseudo})
    np.testing.assert_allclose(onnx_mean, mixture.means, atol=1e-4)
    np.testing.assert_allclose(onnx_log_var, mixture.log_vars, atol=1e-4)
    # The file's mixture density is the training prior's, to float32 rounding.
    z = np.random.default_rng(0).normal(size=(9, 3))
    with torch.no_grad():
        expected = log_prior(model.double(), torch.from_numpy(z)).numpy()
    model.float()
    got = _hand_mixture(
        z, mixture.means.astype(np.float64), mixture.log_vars.astype(np.float64), mixture.weights
    )
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_tampered_prior_file_is_refused(exported_vamp, tmp_path):
    import shutil

    copy = tmp_path / "vamp" / "1"
    shutil.copytree(exported_vamp, copy)
    data = np.load(copy / PRIOR_FILE)
    data[0, 0] += 1
    np.save(copy / PRIOR_FILE, data)
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        verify_model_dir(copy)
    (copy / PRIOR_FILE).unlink()
    with pytest.raises(ManifestError, match="prior parameter file missing"):
        verify_model_dir(copy)


def test_the_mixture_file_density_is_the_training_prior(exported_vamp, trained_vamp):
    mixture = read_mixture(exported_vamp / PRIOR_FILE, 6, 3)
    z = np.random.default_rng(1).normal(size=(4, 5, 3)) * 2
    model = trained_vamp.model.cpu().eval()
    with torch.no_grad():
        expected = log_prior(model, torch.from_numpy(z).float()).numpy()
    np.testing.assert_allclose(mixture.log_density(z), expected, atol=1e-4)


@pytest.mark.parametrize("prior", ["vamp", "standard"])
def test_the_iwae_bound_through_onnx_agrees_with_pytorch(prior, trained_vamp, exported_vamp, tmp_path):
    from training.export import export_run
    from training.onnx_eval import onnx_iwae_bound
    from training.train import train

    if prior == "vamp":
        model, folder = trained_vamp.model.cpu().eval(), exported_vamp
    else:
        config = TrainConfig(latent_dim=3, hidden_dims=(16,), epochs=2, batch_size=64, seed=2)
        result = train(config, tmp_path / "run", dataset=_dataset(), progress=False)
        model = result.model.cpu().eval()
        folder, _ = export_run(model, _dataset(), result.final, tmp_path / "models", "std", measured_with="t")
    x = (np.random.default_rng(3).random((16, *SHAPE)) > 0.6).astype(np.float32)
    k = 2000
    with torch.no_grad():
        ours = iwae_bound(model, torch.from_numpy(x), k, generator=torch.Generator().manual_seed(0)).numpy()
    served = onnx_iwae_bound(folder, x, k, seed=0)
    # Different noise (numpy vs torch), same estimator: they agree to its Monte-Carlo error at k = 2000.
    assert abs(float(served.mean() - ours.mean())) < 0.05, (served.mean(), ours.mean())
    np.testing.assert_allclose(served, ours, atol=0.2)


def test_a_run_can_finish_on_the_iwae_objective(tmp_path):
    """The recipe's last phase: ELBO epochs, then --resume with objective=iwae and a small k."""
    from training.train import train

    base = dict(latent_dim=3, hidden_dims=(16,), prior="vamp", vamp_components=4, batch_size=64)
    train(TrainConfig(epochs=1, **base), tmp_path, dataset=_dataset(128, 32), progress=False)
    late = TrainConfig(epochs=2, objective="iwae", train_k=5, **base)
    result = train(late, tmp_path, dataset=_dataset(128, 32), progress=False, resume=True)
    assert [row["epoch"] for row in result.history] == [1, 2]
    with pytest.raises(ValueError, match=r"different options \(vamp_components\)"):
        train(
            TrainConfig(epochs=3, **{**base, "vamp_components": 5}),
            tmp_path,
            dataset=_dataset(128, 32),
            progress=False,
            resume=True,
        )
