"""A pixel-group colour model's draws: training exports a sampler graph beside the decoder, the graph draws
what the PyTorch modules draw for the same noise, the service answers with draws by default (seeded,
reproducible, tagged) and with the decoder's mean when asked; an exported version's modules are rebuilt
from its graphs' weights alone and republished as a new version with a sampler."""

import json
import shutil

import numpy as np
import pytest

from tests.emoji_models import train_and_export

pytestmark = pytest.mark.timeout(600)  # the fixture trains and exports a model: slow on a busy host


@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory):
    return train_and_export(
        tmp_path_factory, "grouped", conv_channels=(8, 16), channel_coupling=True, pixel_groups=7,
        neighbour_anchors=True, context_width=8, context_layers=2,
    )  # fmt: skip


def test_manifest_declares_the_sampler(grouped_model):
    from vae_contract.manifest import read_manifest

    root, _ = grouped_model
    manifest = read_manifest(root / "grouped" / "1")
    assert manifest.sampler is not None and manifest.sampler.file == "sampler.onnx"
    # Per pixel: 2 learned components and 5 anchors (a Gumbel each), then a logistic per RGB channel.
    assert [t.shape for t in manifest.sampler.inputs] == [["batch", 4], ["batch", 2 + 5 + 3, 16, 16]]
    assert [t.name for t in manifest.decoder.outputs] == ["x"]  # the decoder graph is unchanged
    assert manifest.parity is not None and manifest.parity["sampler_max_abs_diff"] <= 1e-4


def test_sampler_graph_draws_what_the_modules_draw(grouped_model):
    import onnxruntime as ort
    import torch

    from vae_contract.pixel_draws import pixel_rng, sampler_noise

    root, model = grouped_model
    session = ort.InferenceSession(
        str(root / "grouped" / "1" / "sampler.onnx"), providers=["CPUExecutionProvider"]
    )
    z = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for t in (0.0, 1.0):
        noise = sampler_noise(5, 10, 3, 16, 16, pixel_rng(1), t)
        (x,) = session.run(None, {"z": z, "noise": noise})
        with torch.no_grad():
            ref = model.eval().draw(torch.from_numpy(z), torch.from_numpy(noise)).numpy()
        assert np.mean(np.abs(x - ref) > 1e-4) < 0.01  # a float's last bit may move a rounding
        assert np.allclose(x * 255, np.round(x * 255), atol=1e-3)  # 8-bit values
    with torch.no_grad():
        mean = model.decode(torch.from_numpy(z)).numpy()
    assert not np.allclose(x, mean, atol=1 / 255)  # a draw, not the mean


def test_the_service_draws_by_default_and_gives_the_mean_when_asked(grouped_model, serve_app):
    root, _ = grouped_model
    request = {"model": "grouped", "n": 3, "seed": 9}
    with serve_app(root) as client:
        drawn = client.post("/v1/sample", json=request)
        again = client.post("/v1/sample", json=request).json()
        other = client.post("/v1/sample", json={**request, "seed": 10}).json()
        mean = client.post("/v1/sample", json={**request, "pixels": "mean"}).json()
        decoded = client.post(
            "/v1/decode", json={"model": "grouped", "latents": mean["latents"], "pixels": "mean"}
        )
        png = client.post("/v1/sample", json=request, headers={"Accept": "image/png"})
        info = client.get("/v1/models/grouped").json()
    body = drawn.json()
    assert drawn.status_code == 200, drawn.text
    assert (
        body["pixels"] == "sample"
        and body["pixel_temperature"] == 0.5
        and drawn.headers["x-pixels"] == "sample"
    )
    assert body["images"] == again["images"] and body["images"] != other["images"]
    assert (
        mean["pixels"] == "mean" and mean["latents"] == body["latents"] and mean["images"] != body["images"]
    )
    assert decoded.json()["images"] == mean["images"]
    assert png.headers["x-pixels"] == "sample" and png.headers["content-type"] == "image/png"
    assert info["pixels"]["default"] == "sample"


def test_rebuilt_from_the_graphs_and_republished_with_a_sampler(grouped_model, tmp_path, serve_app):
    import torch

    from training.onnx_weights import rebuild
    from training.sampler_version import publish
    from vae_contract.manifest import read_manifest

    root, model = grouped_model
    models = tmp_path / "models"
    shutil.copytree(root / "grouped" / "1", models / "grouped" / "1")
    raw = json.loads((models / "grouped" / "1" / "model.json").read_text())
    raw.pop("sampler")  # a version exported before sampler graphs existed
    raw["parity"].pop("sampler_max_abs_diff")
    (models / "grouped" / "1" / "model.json").write_text(json.dumps(raw))
    (models / "grouped" / "1" / "sampler.onnx").unlink()
    rebuilt, _ = rebuild(models / "grouped" / "1")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)
    target = publish(models / "grouped" / "1")
    assert target == models / "grouped" / "2"
    for file in ("encoder.onnx", "decoder.onnx", "scorer.onnx", "classes.npz"):
        assert (target / file).read_bytes() == (models / "grouped" / "1" / file).read_bytes()
    manifest = read_manifest(target)
    assert manifest.version == 2 and manifest.sampler is not None
    with serve_app(models) as client:
        new = client.post("/v1/sample", json={"model": "grouped", "seed": 1}).json()
        old = client.post("/v1/sample", json={"model": "grouped@1", "seed": 1, "pixels": "sample"})
    assert new["version"] == 2 and new["pixels"] == "sample"
    assert old.status_code == 422 and "no sampler graph" in old.json()["error"]


def test_republished_with_its_aggregate_posterior_as_prior(grouped_model, tmp_path, serve_app):
    """training.aggregate_prior: the same graphs byte for byte; the prior's components are the training
    images' posteriors (as the graphs encode them) and N(0, I), of equal weight; a label draws from its own
    images' components; no image's score rises by more than log K, and a training image's KL is at most
    log K."""
    import base64
    import math

    from tests.emoji_models import fixture_dataset
    from training.aggregate_prior import publish
    from vae_contract.classes import read_conditional
    from vae_contract.imaging import encode_png
    from vae_contract.manifest import read_manifest
    from vae_contract.priors import MixturePrior, read_mixture

    root, _ = grouped_model
    models = tmp_path / "models"
    shutil.copytree(root / "grouped" / "1", models / "grouped" / "1")
    dataset = fixture_dataset()
    target = publish(models / "grouped" / "1", dataset=dataset, iwae_k=4)
    assert target == models / "grouped" / "2"
    for file in ("encoder.onnx", "decoder.onnx", "scorer.onnx", "sampler.onnx"):
        assert (target / file).read_bytes() == (models / "grouped" / "1" / file).read_bytes()
    manifest = read_manifest(target)
    assert manifest.prior is not None and manifest.conditional is not None and manifest.metrics is not None
    assert manifest.metrics.iwae_k == 4 and "aggregate_prior" in manifest.metrics.measured_with
    k = len(dataset.x_train) + 1
    prior = read_mixture(target / "prior.npy", manifest.prior.components, 4)
    assert prior.components == k and np.allclose(prior.weights, 1 / k)
    pngs = [base64.b64encode(encode_png(image / 255)).decode("ascii") for image in dataset.x_train]
    with serve_app(models) as client:

        def answer(route: str, model: str, images: list[str]) -> dict:
            response = client.post(route, json={"model": model, "images": images})
            assert response.status_code == 200, response.text
            return response.json()

        encoded = answer("/v1/encode", "grouped", pngs)
        mean, log_var = (np.asarray(encoded[key], np.float32) for key in ("mean", "log_var"))
        np.testing.assert_allclose(prior.means[:-1], mean, atol=1e-4)
        np.testing.assert_allclose(prior.log_vars[:-1], log_var, atol=1e-4)
        assert not prior.means[-1].any() and not prior.log_vars[-1].any()  # N(0, I)
        both = pngs + [base64.b64encode(encode_png(image / 255)).decode("ascii") for image in dataset.x_test]
        old = np.asarray(answer("/v1/reconstruct", "grouped@1", both)["scores"])
        new = np.asarray(answer("/v1/reconstruct", "grouped@2", both)["scores"])
        assert (new <= old + math.log(k) + 1e-3).all()  # p(z) >= N(z; 0, I) / K
        # The score is -log p(x | z = mean) + KL: the first term is the same graph's, the KL under N(0, I) is
        # the last component's, so the new KL of a training image is new - (old - KL_N); its own component
        # is its posterior (KL 0), so that KL is at most log K.
        kl = new[: len(pngs)] - (old[: len(pngs)] - prior.component_kls(mean, log_var)[:, -1])
        assert (kl <= math.log(k) + 1e-3).all()
        label = dataset.classes[1]
        drawn = client.post("/v1/sample", json={"model": "grouped", "n": 5, "seed": 3, "label": label,
                                                  "temperature": 0.7}).json()  # fmt: skip
        info = client.get("/v1/models").json()
    assert manifest.conditional.kind == "prior_components_per_class"
    classes = read_conditional(target / "classes.npz", "prior_components_per_class",
                               manifest.conditional.classes, 4, prior)  # fmt: skip
    np.testing.assert_array_equal(classes.component_class, [*dataset.y_train, -1])
    own = np.flatnonzero(dataset.y_train == 1)
    by_hand = MixturePrior(prior.means[own], prior.log_vars[own], np.full(len(own), 1 / len(own)))
    np.testing.assert_array_equal(np.asarray(drawn["latents"], np.float32), by_hand.draw(5, 3, 0.7))
    listed = next(m for m in info["models"] if m["name"] == "grouped")
    assert listed["prior"]["components"] == k and "aggregate posterior" in listed["prior"]["source"]
