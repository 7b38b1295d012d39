"""Class-conditional sampling through the service, against the committed Fashion-MNIST model: the seeded
draw equals numpy's from `classes.npz` by the reference arithmetic, labels are checked, and bad class files
are refused at load."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serving import serve

from vae_contract.classes import ClassFileError, read_class_gaussians

pytestmark = pytest.mark.timeout(120)
MODELS = Path(__file__).parents[2] / "models"
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]  # fmt: skip


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("fashion", "mnist"):  # fashion/1 ships classes.npz; mnist/1 has no conditional section
        shutil.copytree(MODELS / name / "1", root / name / "1")
    return root


@pytest.fixture(scope="module")
def client(models_root):
    with serve(models_root, default_model="fashion") as c:
        yield c


def reference_draw(label: int, n: int, seed: int, temperature: float) -> np.ndarray:
    """ClassGaussians.draw (vae_contract/classes.py), written out by hand on the committed file's arrays."""
    with np.load(MODELS / "fashion" / "1" / "classes.npz", allow_pickle=False) as npz:
        mean, chol = npz["mean"], npz["cholesky"]
    eps = np.random.default_rng(seed).standard_normal((n, mean.shape[1]), dtype=np.float32)
    return (mean[label] + np.float32(temperature) * (eps @ chol[label].T)).astype(np.float32)


def test_seeded_conditional_draw_equals_numpy(client):
    body = {"n": 5, "seed": 7, "label": "Sneaker", "model": "fashion", "temperature": 0.8}
    response = client.post("/v1/sample", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["label"] == "Sneaker" and data["seed"] == 7 and len(data["images"]) == 5
    np.testing.assert_array_equal(np.asarray(data["latents"], np.float32), reference_draw(7, 5, 7, 0.8))
    # The npy latents are the same float32 values, bit for bit.
    npy = client.post("/v1/sample?output=latents", json=body, headers={"accept": "application/x-npy"})
    assert npy.status_code == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), reference_draw(7, 5, 7, 0.8))


def test_same_seed_same_images_other_label_other_draw(client):
    def run(label: str, seed: int = 3) -> bytes:
        body = {"n": 4, "seed": seed, "label": label}
        response = client.post("/v1/sample", json=body, headers={"accept": "image/png"})
        assert response.status_code == 200 and response.headers["x-model-version"] == "1"
        return response.content

    assert run("Bag") == run("Bag")
    assert run("Bag") != run("Trouser")
    assert run("Bag") != run("Bag", seed=4)
    # Unconditional sampling is unchanged: the prior's draw.
    prior = client.post("/v1/sample", json={"n": 2, "seed": 3}).json()
    np.testing.assert_array_equal(
        np.asarray(prior["latents"], np.float32),
        np.random.default_rng(3).standard_normal((2, 32), np.float32),
    )
    assert "label" not in prior


def test_label_with_version_pinning(client):
    want = reference_draw(1, 2, 11, 1.0)
    for body in ({"model": "fashion@1"}, {"model": "fashion", "version": 1}):
        data = client.post("/v1/sample", json={"n": 2, "seed": 11, "label": "Trouser", **body}).json()
        assert data["version"] == 1
        np.testing.assert_array_equal(np.asarray(data["latents"], np.float32), want)
    fields = {"n": "2", "seed": "11", "label": "Trouser", "model": "fashion@1"}
    form = client.post("/v1/sample", files={k: (None, v) for k, v in fields.items()})  # multipart fields
    assert form.status_code == 200, form.text
    np.testing.assert_array_equal(np.asarray(form.json()["latents"], np.float32), want)


def test_unknown_label_is_422_listing_the_valid_ones(client):
    response = client.post("/v1/sample", json={"n": 2, "seed": 1, "label": "Hat"})
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "invalid_input"
    assert "'Hat'" in body["error"]
    for name in FASHION:
        assert repr(name) in body["error"]
    # An integer is read as a class name; Fashion-MNIST's are words, so 7 is unknown too.
    numeric = client.post("/v1/sample", json={"n": 1, "label": 7})
    assert numeric.status_code == 422 and "'Sneaker'" in numeric.json()["error"]


def test_label_on_a_model_without_classes_is_422(client):
    response = client.post("/v1/sample", json={"n": 1, "label": "7", "model": "mnist"})
    assert response.status_code == 422
    assert response.json()["error_type"] == "invalid_input"
    assert "has no classes" in response.json()["error"]


def test_models_list_the_labels(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["fashion"]["manifest"]["conditional"]["classes"] == FASHION
    assert models["mnist"]["manifest"]["conditional"] is None


def test_openapi_documents_label(client):
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/sample"]["post"]["requestBody"]["content"]
    assert "label" in body["application/json"]["schema"]["properties"]
    assert "label" in doc["components"]["schemas"]["SampleResponse"]["properties"]


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good(k: int = 2, d: int = 3) -> dict[str, np.ndarray]:
    return {
        "names": np.asarray(["a", "b"][:k]),
        "counts": np.array([5, 6][:k]),
        "mean": np.zeros((k, d), np.float32),
        "cholesky": np.stack([np.eye(d, dtype=np.float32)] * k),
    }


def test_class_file_checks(tmp_path):
    ok = read_class_gaussians(_write(tmp_path / "ok.npz", **_good()), ["a", "b"], 3)
    assert ok.names == ("a", "b") and ok.index("b") == 1 and ok.index("c") is None
    np.testing.assert_array_equal(
        ok.draw(1, 2, 5), np.random.default_rng(5).standard_normal((2, 3), np.float32)
    )
    cases = {
        "names": (_good(), ["a", "c"], 3),
        "float32": ({**_good(), "mean": np.zeros((2, 3))}, ["a", "b"], 3),
        "(2, 4)": (_good(), ["a", "b"], 4),
        "non-finite": ({**_good(), "mean": np.full((2, 3), np.nan, np.float32)}, ["a", "b"], 3),
        "lower triangular": ({**_good(), "cholesky": np.ones((2, 3, 3), np.float32)}, ["a", "b"], 3),
        "non-positive": ({**_good(), "cholesky": np.zeros((2, 3, 3), np.float32)}, ["a", "b"], 3),
        "expected the arrays": ({"names": np.asarray(["a", "b"])}, ["a", "b"], 3),
    }
    for message, (arrays, classes, d) in cases.items():
        with pytest.raises(ClassFileError, match=message):
            read_class_gaussians(_write(tmp_path / "bad.npz", **arrays), classes, d)
    pickled = {**_good(), "names": np.array(["a", "b"], dtype=object)}
    with pytest.raises(ClassFileError, match="plain arrays"):
        read_class_gaussians(_write(tmp_path / "pickled.npz", **pickled), ["a", "b"], 3)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ClassFileError, match="plain arrays"):
        read_class_gaussians(tmp_path / "junk.npz", ["a", "b"], 3)


def test_python_client_sends_label(models_root, live, settings_for):
    from service.client import VAEClient, VAEServiceError

    with live(settings_for(models_root)) as url, VAEClient(url) as vae:
        result = vae.sample(3, model="fashion", seed=5, label="Bag")
        np.testing.assert_array_equal(result.latents, reference_draw(8, 3, 5, 1.0))
        with pytest.raises(VAEServiceError) as err:
            vae.sample(1, model="fashion", label="Hat")
    assert err.value.status == 422 and "'Ankle boot'" in err.value.message


def test_a_bad_class_file_is_refused_at_load(tmp_path):
    """A classes.npz whose hash matches but whose factor is no Cholesky factor: the model is not served, and
    /readyz says why."""
    import hashlib
    import json

    folder = tmp_path / "models" / "fashion" / "1"
    shutil.copytree(MODELS / "fashion" / "1", folder)
    with np.load(folder / "classes.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["cholesky"] = arrays["cholesky"].transpose(0, 2, 1).copy()  # upper triangular
    np.savez(folder / "classes.npz", **arrays)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["conditional"]["sha256"] = hashlib.sha256((folder / "classes.npz").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(manifest))
    with serve(tmp_path / "models") as c:
        ready = c.get("/readyz").json()
    assert ready["models"] == {"fashion": False}
    assert "cholesky is not lower triangular" in ready["failures"]["fashion"]


def _mixture(k: int = 4, d: int = 3):
    from vae_contract.priors import MixturePrior

    means = np.arange(k * d, dtype=np.float32).reshape(k, d)
    return MixturePrior(means, np.full((k, d), -2.0, np.float32), np.full(k, 1 / k))


def test_component_class_file_checks_and_draws(tmp_path):
    """prior_components_per_class: class c draws from the prior's components of class c (weights
    renormalised), exactly as MixturePrior.draw would from those components alone; -1 is no class; a class
    without components draws from the whole prior."""
    from vae_contract.classes import read_conditional, write_class_components
    from vae_contract.priors import MixturePrior

    prior = _mixture()
    owners = np.array([1, 0, 1, -1])  # class "a" owns component 1, "b" components 0 and 2, "c" none
    path, _ = write_class_components(("a", "b", "c"), np.array([1, 2, 0]), owners, tmp_path)
    classes = read_conditional(path, "prior_components_per_class", ["a", "b", "c"], 3, prior)
    assert classes.names == ("a", "b", "c") and classes.index("c") == 2
    b = classes.draw(1, 6, seed=4, temperature=0.5)
    by_hand = MixturePrior(prior.means[[0, 2]], prior.log_vars[[0, 2]], np.array([0.5, 0.5])).draw(6, 4, 0.5)
    np.testing.assert_array_equal(b, by_hand)
    # Component means are 3 apart and the spread is exp(-1) * 0.5: each draw is near one of b's own means.
    nearest = np.abs(b[:, None, :] - prior.means[None]).sum(axis=2).argmin(axis=1)
    assert set(nearest) <= {0, 2}
    alone = prior.means[1] + np.float32(np.exp(-1.0)) * _eps_after_choice(1, 3, 1, 3)  # one component
    np.testing.assert_allclose(classes.draw(0, 3, seed=1), alone, rtol=1e-6)
    np.testing.assert_array_equal(classes.draw(2, 5, seed=2), prior.draw(5, 2))
    cases = {
        "outside -1..2": np.array([1, 0, 3, -1]),
        "one per prior component": np.array([1, 0, 1]),
        "integers": np.array([1.0, 0, 1, -1]),
    }
    for message, bad in cases.items():
        path = _write(tmp_path / "bad.npz", names=np.asarray(["a", "b", "c"]), counts=np.array([1, 2, 0]),
                      component_class=bad)  # fmt: skip
        with pytest.raises(ClassFileError, match=message):
            read_conditional(path, "prior_components_per_class", ["a", "b", "c"], 3, prior)
    with pytest.raises(ClassFileError, match="there is none"):
        read_conditional(path, "prior_components_per_class", ["a", "b", "c"], 3, None)
    np.savez(tmp_path / "gaussians.npz", **_good())  # the other kind's arrays
    with pytest.raises(ClassFileError, match="expected the arrays names, counts, component_class"):
        read_conditional(tmp_path / "gaussians.npz", "prior_components_per_class", ["a", "b"], 3, prior)


def _eps_after_choice(seed: int, n: int, components: int, d: int) -> np.ndarray:
    """The Gaussian draws MixturePrior.draw makes after choosing n of `components` components."""
    rng = np.random.default_rng(seed)
    rng.choice(components, size=n, p=np.full(components, 1 / components))
    return rng.standard_normal((n, d), dtype=np.float32)


def test_a_manifest_with_component_classes_needs_a_prior_and_a_known_kind():
    from vae_contract.manifest import Manifest

    raw = json.loads((MODELS / "fashion" / "1" / "model.json").read_text())
    raw["conditional"]["kind"] = "prior_components_per_class"
    with pytest.raises(ValueError, match="names components of a prior: it needs `prior`"):
        Manifest.model_validate(raw)
    raw["conditional"]["kind"] = "flow_per_class"
    with pytest.raises(ValueError, match=r"unknown conditional kind 'flow_per_class'.*upgrade the service"):
        Manifest.model_validate(raw)
