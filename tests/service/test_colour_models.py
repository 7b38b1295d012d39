"""An RGB model with the discretized logistic mixture, exported by the project's own code from real emoji
(tests/fixtures/emoji) and served: the manifest states the likelihood, the decoder declares `params`, and the
reconstruct score is the mixture's code length plus the KL, computed here by hand from the graphs."""

import io
from pathlib import Path

import numpy as np
import pytest

from tests.emoji_models import train_and_export
from vae_contract.likelihoods import discretized_logistic_nll, kl_to_prior

pytestmark = pytest.mark.timeout(240)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "emoji"


@pytest.fixture(scope="module")
def colour_models(tmp_path_factory) -> Path:
    return train_and_export(tmp_path_factory, "emoji-tiny")[0]


def test_manifest_states_the_likelihood_and_baselines(colour_models):
    from vae_contract.manifest import read_manifest

    manifest = read_manifest(colour_models / "emoji-tiny" / "1")
    assert manifest.likelihood == "discretized_logistic" and manifest.mixture_components == 2
    assert [t.name for t in manifest.decoder.outputs] == ["x", "params"]
    assert manifest.decoder.outputs[1].shape == ["batch", 2 * 7, 16, 16]
    metrics = manifest.metrics
    assert metrics is not None and metrics.bits_per_dim is not None
    assert metrics.bits_per_dim == pytest.approx(metrics.neg_elbo / (3 * 16 * 16 * np.log(2)), abs=1e-3)
    assert set(metrics.baselines_bits_per_dim or {}) == {"webp_lossless", "png", "ppca"}
    assert manifest.dataset.classes is not None and manifest.dataset.classes[0] == "Smileys & Emotion"
    assert manifest.image.background == "white"  # emoji were composited on white; uploads are too


def test_class_statistics_are_a_hashed_side_file(colour_models):
    from vae_contract.manifest import ManifestError, read_manifest, verify_model_dir

    folder = colour_models / "emoji-tiny" / "1"
    conditional = read_manifest(folder).conditional
    assert conditional is not None and conditional.classes[1] == "People & Body"
    with np.load(folder / conditional.file, allow_pickle=False) as npz:
        assert npz["mean"].shape == (10, 4) and npz["cholesky"].shape == (10, 4, 4)
        assert npz["counts"].tolist()[:4] == [2, 3, 0, 1]  # train: the last six files
    tampered = folder.parent.parent.parent / "tampered"
    import shutil

    shutil.copytree(folder, tampered)
    (tampered / conditional.file).write_bytes(b"not the statistics")
    with pytest.raises(ManifestError, match=r"classes\.npz: sha256 mismatch"):
        verify_model_dir(tampered)


def test_reconstruct_scores_with_the_mixture(colour_models, serve_app):
    import onnxruntime as ort

    png = (FIXTURES / "twitter-1f600.png").read_bytes()  # RGBA: the service composites it (on black)
    with serve_app(colour_models) as client:
        response = client.post("/v1/reconstruct", files=[("files", ("e.png", png, "image/png"))])
        sample = client.post("/v1/sample", json={"n": 2, "seed": 1}, headers={"accept": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sample.status_code == 200 and sample.content.startswith(b"\x89PNG")

    from PIL import Image

    from vae_contract.imaging import decode_image, prepare_image
    from vae_contract.manifest import read_manifest

    folder = colour_models / "emoji-tiny" / "1"
    spec = read_manifest(folder).image
    x = prepare_image(decode_image(png), spec)[None]
    mean, log_var = ort.InferenceSession(str(folder / "encoder.onnx")).run(None, {"x": x})
    _recon, params = ort.InferenceSession(str(folder / "decoder.onnx")).run(None, {"z": mean})
    expected = discretized_logistic_nll(x, params) + kl_to_prior(mean, log_var)
    assert body["scores"][0] == pytest.approx(float(expected[0]), rel=1e-4)
    assert Image.open(io.BytesIO(sample.content)).mode == "RGB"


def test_transparent_pixels_take_the_stated_background():
    from vae_contract.imaging import decode_image, prepare_image
    from vae_contract.manifest import ImageSpec

    png = (FIXTURES / "google-1f600.png").read_bytes()  # its corner is fully transparent
    white = prepare_image(decode_image(png), ImageSpec(channels=3, height=32, width=32, background="white"))
    black = prepare_image(decode_image(png), ImageSpec(channels=3, height=32, width=32))
    assert white[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert black[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
