"""A model whose prior is not N(0, I): the manifest's mixture file is verified, sampled with the request's
seed (the same draw numpy gives from the file's parameters), scored with the documented KL bound, shown on
/v1/models; unknown prior kinds and bad files are refused alone; manifests without a prior are unchanged.
Tiny linear models built with onnx.helper: no torch."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import onnx_models
import pytest
from starlette.testclient import TestClient

from service.config import Settings
from service.inference import ModelRegistry
from service.inference.model import draw_prior
from service.main import create_app
from vae_contract.likelihoods import kl_to_prior
from vae_contract.manifest import PriorSpec, read_manifest, sha256_file, verify_model_dir, write_manifest
from vae_contract.priors import PRIOR_FILE, write_mixture

pytestmark = pytest.mark.timeout(60)

LATENT, IMAGE = 2, (1, 8, 8)
# Three components far apart with unequal weights, so a wrong component choice shows in every draw.
MEANS = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, -3.0]], dtype=np.float32)
LOG_VARS = np.array([[-2.0, -1.0], [0.0, -3.0], [-1.0, 0.5]], dtype=np.float32)
WEIGHTS = np.array([0.2, 0.5, 0.3])


def add_prior(folder: Path, means: np.ndarray, log_vars: np.ndarray, weights: np.ndarray) -> None:
    write_mixture(folder / PRIOR_FILE, means, log_vars, weights)
    spec = PriorSpec(
        kind="mixture_of_gaussians",
        components=len(means),
        file=PRIOR_FILE,
        sha256=sha256_file(folder / PRIOR_FILE),
        source="test mixture",
    )
    write_manifest(folder, read_manifest(folder).model_copy(update={"prior": spec}))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Identical linear graphs under three priors: `std` (none declared), `mix` (MEANS/LOG_VARS/WEIGHTS) and
    `one` (a single N(0, I) component, which must score exactly as `std`)."""
    root = tmp_path_factory.mktemp("prior-models")
    for name in ("std", "mix", "one"):
        onnx_models.write_model(root, name, latent_dim=LATENT, image=IMAGE)
    add_prior(root / "mix" / "1", MEANS, LOG_VARS, WEIGHTS)
    zeros = np.zeros((1, LATENT), dtype=np.float32)
    add_prior(root / "one" / "1", zeros, zeros, np.ones(1))
    return root


@pytest.fixture(scope="module")
def registry(models_dir: Path):
    reg = ModelRegistry(Settings(models_dir=models_dir, provider="cpu", default_model="std"))
    reg.load()
    assert reg.ready, reg.failures
    yield reg
    asyncio.run(reg.close())


@pytest.fixture(scope="module")
def client(models_dir: Path):
    with TestClient(create_app(Settings(models_dir=models_dir, provider="cpu", default_model="std"))) as c:
        yield c


def numpy_draw(folder: Path, n: int, seed: int, temperature: float) -> np.ndarray:
    """The documented draw, from the file alone: a component with the seeded Generator, then a Gaussian."""
    raw = np.load(folder / PRIOR_FILE)
    means, log_vars, weights = raw[:, :LATENT], raw[:, LATENT : 2 * LATENT], raw[:, 2 * LATENT]
    rng = np.random.default_rng(seed)
    k = rng.choice(len(raw), size=n, p=weights / weights.sum())
    eps = rng.standard_normal((n, LATENT), dtype=np.float32)
    return means[k] + np.float32(temperature) * np.exp(log_vars[k] / 2) * eps


def test_the_prior_file_is_hashed_with_the_graphs(models_dir):
    manifest = verify_model_dir(models_dir / "mix" / "1")
    assert manifest.prior is not None and manifest.prior.components == 3
    assert read_manifest(models_dir / "std" / "1").prior is None


@pytest.mark.parametrize(("seed", "temperature"), [(0, 1.0), (123, 0.5), (2**31 - 1, 1.3)])
def test_sampling_equals_the_numpy_draw_from_the_manifest_parameters(client, models_dir, seed, temperature):
    r = client.post("/v1/sample", json={"model": "mix", "n": 64, "seed": seed, "temperature": temperature})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["latents"], dtype=np.float32)
    expected = numpy_draw(models_dir / "mix" / "1", 64, seed, temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # Every draw lies near one of the far-apart components, all three of them in use.
    nearest = np.argmin(((got[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)
    assert set(nearest.tolist()) == {0, 1, 2}


def test_a_model_without_a_prior_still_samples_n01(client):
    r = client.post("/v1/sample", json={"model": "std", "n": 4, "seed": 7, "temperature": 0.9})
    assert r.status_code == 200
    np.testing.assert_array_equal(np.array(r.json()["latents"], dtype=np.float32), draw_prior(4, 2, 7, 0.9))


def test_models_route_shows_the_prior(client):
    mix = client.get("/v1/models/mix").json()
    assert mix["prior"]["kind"] == "mixture_of_gaussians" and mix["prior"]["components"] == 3
    assert mix["manifest"]["prior"]["file"] == PRIOR_FILE
    std = client.get("/v1/models/std").json()
    assert std["prior"]["kind"] == "standard_normal" and std["manifest"]["prior"] is None


def _hand_kl_bound(mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """-log sum_k w_k exp(-KL(q || p_k)), each KL between diagonal Gaussians written out unit by unit."""
    out = []
    for m, lv in zip(mean.astype(np.float64), log_var.astype(np.float64), strict=True):
        terms = []
        for k in range(len(MEANS)):
            kl = 0.0
            for d in range(LATENT):
                vk, v = math.exp(LOG_VARS[k, d]), math.exp(lv[d])
                kl += 0.5 * (math.log(vk / v) + (v + (m[d] - MEANS[k, d]) ** 2) / vk - 1)
            terms.append(math.log(WEIGHTS[k]) - kl)
        top = max(terms)
        out.append(-(top + math.log(sum(math.exp(t - top) for t in terms))))
    return np.array(out)


def test_reconstruct_scores_with_the_kl_bound_under_the_mixture(registry):
    images = np.random.default_rng(0).random((5, *IMAGE), dtype=np.float32)
    std = asyncio.run(registry.get("std").reconstruct(images))
    mix = asyncio.run(registry.get("mix").reconstruct(images))
    one = asyncio.run(registry.get("one").reconstruct(images))
    np.testing.assert_array_equal(mix.mean, std.mean)  # same graphs: only the KL term differs
    reconstruction = std.scores.astype(np.float64) - kl_to_prior(std.mean, std.log_var)
    np.testing.assert_allclose(
        mix.scores, reconstruction + _hand_kl_bound(mix.mean, mix.log_var), rtol=1e-5, atol=1e-3
    )
    # The bound is exact for one component: N(0, I) as a mixture scores as the closed form does.
    np.testing.assert_allclose(one.scores, std.scores, rtol=1e-6)


def test_the_kl_bound_lies_above_a_monte_carlo_kl():
    from vae_contract.priors import MixturePrior

    prior = MixturePrior(MEANS, LOG_VARS, WEIGHTS)
    mean, log_var = np.array([[1.0, 2.0]]), np.array([[0.5, -0.5]])
    rng = np.random.default_rng(1)
    z = mean + np.exp(log_var / 2) * rng.standard_normal((200_000, LATENT))
    log_q = -0.5 * np.sum(np.log(2 * np.pi) + log_var + (z - mean) ** 2 / np.exp(log_var), axis=1)
    comp = -0.5 * np.sum(
        np.log(2 * np.pi) + LOG_VARS + (z[:, None] - MEANS) ** 2 / np.exp(LOG_VARS), axis=2
    ) + np.log(WEIGHTS)
    top = comp.max(1)
    log_p = top + np.log(np.exp(comp - top[:, None]).sum(1))
    mc = float(np.mean(log_q - log_p))
    bound = float(prior.kl_bound(mean, log_var)[0])
    assert mc <= bound + 0.01 and bound < float((prior.component_kls(mean, log_var) @ WEIGHTS)[0])


def test_component_kls_equal_the_closed_form_one_pair_at_a_time():
    """The matrix-product form against the textbook KL between two diagonal Gaussians, pair by pair, on
    posteriors like a trained encoder's (log-variances -8 to 1), including each component's own posterior."""
    from vae_contract.priors import MixturePrior

    rng = np.random.default_rng(4)
    k, d = 50, 16
    means = rng.normal(0, 2, (k, d)).astype(np.float32)
    log_vars = rng.uniform(-8, 1, (k, d)).astype(np.float32)
    prior = MixturePrior(means, log_vars, np.full(k, 1 / k))
    mean = np.concatenate([means[:3], rng.normal(0, 2, (5, d)).astype(np.float32)])
    log_var = np.concatenate([log_vars[:3], rng.uniform(-8, 1, (5, d)).astype(np.float32)])
    got = prior.component_kls(mean, log_var)
    for i in range(len(mean)):
        for j in range(k):
            m, lv, mk, lvk = (a.astype(np.float64) for a in (mean[i], log_var[i], means[j], log_vars[j]))
            expected = 0.5 * np.sum(lvk - lv + (np.exp(lv) + (m - mk) ** 2) / np.exp(lvk) - 1)
            assert got[i, j] == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert np.all(np.diagonal(got[:3, :3]) < 1e-6)  # a posterior against itself


def _edited(models_dir: Path, tmp_path: Path, edit) -> tuple[Path, str]:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(models_dir / "mix", root / "mix")
    shutil.copytree(models_dir / "std", root / "std")
    edit(root / "mix" / "1")
    reg = ModelRegistry(Settings(models_dir=root, provider="cpu", default_model="std"))
    reg.load()
    try:
        assert "std" in reg.models and "mix" not in reg.models  # refused alone
        return root, reg.failures["mix"]
    finally:
        asyncio.run(reg.close())


def test_an_unknown_prior_kind_is_refused_with_a_reason(models_dir, tmp_path):
    def flow(folder: Path) -> None:
        raw = json.loads((folder / "model.json").read_text())
        raw["prior"]["kind"] = "normalizing_flow"
        (folder / "model.json").write_text(json.dumps(raw))

    _, reason = _edited(models_dir, tmp_path, flow)
    assert "unknown prior kind 'normalizing_flow'" in reason and "mixture_of_gaussians" in reason


def test_an_unknown_prior_field_is_refused(models_dir, tmp_path):
    def extra(folder: Path) -> None:
        raw = json.loads((folder / "model.json").read_text())
        raw["prior"]["temperature_schedule"] = "cosine"
        (folder / "model.json").write_text(json.dumps(raw))

    _, reason = _edited(models_dir, tmp_path, extra)
    assert "prior.temperature_schedule" in reason


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 5), dtype=np.float32), "expected float32 (3, 5)"),
        (np.zeros((3, 5), dtype=np.float64), "expected float32 (3, 5)"),
        (np.full((3, 5), np.nan, dtype=np.float32), "non-finite"),
        (np.concatenate([MEANS, LOG_VARS, np.full((3, 1), 0.5)], axis=1).astype(np.float32), "sum to 1"),
        (
            np.concatenate([MEANS, LOG_VARS + 100, WEIGHTS[:, None]], axis=1).astype(np.float32),
            "log-variances",
        ),
    ],
)
def test_a_bad_prior_file_is_refused(models_dir, tmp_path, array, message):
    def replace(folder: Path) -> None:
        np.save(folder / PRIOR_FILE, array)
        manifest = read_manifest(folder)
        assert manifest.prior is not None
        spec = manifest.prior.model_copy(update={"sha256": sha256_file(folder / PRIOR_FILE)})
        write_manifest(folder, manifest.model_copy(update={"prior": spec}))

    _, reason = _edited(models_dir, tmp_path, replace)
    assert message in reason


def test_a_pickled_prior_file_is_refused(models_dir, tmp_path):
    def pickled(folder: Path) -> None:
        np.save(folder / PRIOR_FILE, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        manifest = read_manifest(folder)
        assert manifest.prior is not None
        spec = manifest.prior.model_copy(update={"sha256": sha256_file(folder / PRIOR_FILE)})
        write_manifest(folder, manifest.model_copy(update={"prior": spec}))

    _, reason = _edited(models_dir, tmp_path, pickled)
    assert "not a .npy array" in reason
