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
