"""Novelty: the statistic and the conformal p-value against hand computations, the calibration file's checks
and refusals at load, reconstruct's answer with and without a calibration file, bad `alpha`, and on real
data that MNIST digits are more novel than Fashion-MNIST test images under the committed fashion model."""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from serving import serve

from service.config import Settings
from service.inference import ModelRegistry
from vae_contract.imaging import encode_png
from vae_contract.manifest import ManifestError, sha256_file, verify_model_dir
from vae_contract.novelty import (
    Calibration,
    NoveltyFileError,
    conformal_p_values,
    novelty_terms,
    read_calibration,
    up_filtered,
    write_calibration,
    zlib_bits,
)

pytestmark = pytest.mark.timeout(120)
MODELS = Path(__file__).parents[2] / "models"


# --- the statistic and the p-value by hand ------------------------------------------------------------------


def test_conformal_p_value_is_one_plus_the_count_at_or_above_over_n_plus_one():
    calibration = np.array([1.0, 2.0, 3.0, 4.0])
    got = conformal_p_values(np.array([2.5, 2.0, 10.0, -1.0, 4.0]), calibration)
    # 2.5: {3, 4}; 2.0: {2, 3, 4} (ties count); 10: none; -1: all four; 4: {4}
    assert got.tolist() == pytest.approx([3 / 5, 4 / 5, 1 / 5, 5 / 5, 2 / 5])
    assert Calibration("neg_elbo_bits", calibration).p_values(np.array([3.0]))[0] == pytest.approx(3 / 5)


def test_up_filter_and_code_length_by_hand():
    image = np.array([[[[1, 2], [0, 5]]]], dtype=np.uint8)  # (1, 1, 2, 2)
    assert up_filtered(image)[0, 0].tolist() == [[1, 2], [255, 3]]  # 0 - 1 = -1 = 255 (mod 256)
    assert zlib_bits(image)[0] == 8 * len(zlib.compress(bytes([1, 2, 255, 3]), 9))


def test_complexity_is_the_elbo_in_bits_per_dim_minus_the_codec_per_dim():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 4, 4)).astype(np.uint8)
    neg_elbo, kl = np.array([100.0, 200.0, 300.0]), np.array([1.0, 2.0, 3.0])
    terms = novelty_terms("complexity_zlib_up", neg_elbo, kl, images)
    for i in range(3):
        rows = images[i].astype(int)
        rows[:, 1:] -= images[i][:, :-1]
        codec = 8 * len(zlib.compress((rows % 256).astype(np.uint8).tobytes(), 9)) / 48
        bpd = neg_elbo[i] / (48 * math.log(2))
        assert terms.bits_per_dim[i] == pytest.approx(bpd)
        assert terms.codec_bits_per_dim[i] == pytest.approx(codec)
        assert terms.novelty[i] == pytest.approx(bpd - codec) == terms.complexity[i]
    assert terms.kl.tolist() == [1.0, 2.0, 3.0]
    assert (
        novelty_terms("neg_elbo_bits", neg_elbo, kl, images).novelty.tolist() == terms.bits_per_dim.tolist()
    )


# --- the calibration file -----------------------------------------------------------------------------------


def test_the_file_round_trips_sorted(tmp_path):
    write_calibration(tmp_path / "n.npz", "neg_elbo_bits", np.arange(30.0)[::-1])
    read = read_calibration(tmp_path / "n.npz", "neg_elbo_bits", 30)
    assert read.count == 30 and read.scores.tolist() == list(np.arange(30.0))


@pytest.mark.parametrize(
    ("arrays", "statistic", "count", "fragment"),
    [
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.arange(30.0)}, "complexity_zlib_up", 30,
         "the manifest says 'complexity_zlib_up'"),
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.arange(30.0)}, "neg_elbo_bits", 31,
         "expected scores float64 (31,)"),
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.arange(30.0)[::-1].copy()}, "neg_elbo_bits",
         30, "not sorted"),
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.r_[np.arange(29.0), np.nan]}, "neg_elbo_bits",
         30, "non-finite"),
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.arange(30, dtype=np.float32)}, "neg_elbo_bits",
         30, "found float32"),
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.arange(30.0), "x": np.zeros(1)},
         "neg_elbo_bits", 30, "expected the arrays"),
        ({"statistic": np.array("neg_elbo_bits"), "scores": np.arange(30.0)}, "neg_elbo_bits", 5,
         "5 calibration images"),
    ],
)  # fmt: skip
def test_bad_calibration_files_are_refused_with_the_reason(tmp_path, arrays, statistic, count, fragment):
    path = tmp_path / "n.npz"
    np.savez(path, **arrays)
    with pytest.raises(NoveltyFileError) as info:
        read_calibration(path, statistic, count)
    assert fragment in str(info.value)


def test_a_file_that_is_not_an_npz_is_refused(tmp_path):
    (tmp_path / "n.npz").write_bytes(b"not a zip")
    with pytest.raises(NoveltyFileError, match=r"not an \.npz"):
        read_calibration(tmp_path / "n.npz", "neg_elbo_bits", 30)


def _calibrate(
    version_dir: Path, scores: np.ndarray, statistic: str = "neg_elbo_bits", **spec: object
) -> None:
    """A calibration file in a version folder and its manifest section, as training.novelty writes them."""
    write_calibration(version_dir / "novelty.npz", "neg_elbo_bits", scores)
    manifest = json.loads((version_dir / "model.json").read_text())
    digest = sha256_file(version_dir / "novelty.npz")
    manifest["novelty"] = {"statistic": statistic, "file": "novelty.npz", "sha256": digest,
                           "count": len(scores), **spec}  # fmt: skip
    (version_dir / "model.json").write_text(json.dumps(manifest))


def _load(models: Path) -> ModelRegistry:
    registry = ModelRegistry(Settings(models_dir=models, models=["tiny"], provider="cpu", _env_file=None))
    registry.load()
    return registry


def test_the_manifest_hashes_the_file_and_a_changed_file_refuses_the_version(model_copy):
    version = model_copy / "tiny" / "1"
    _calibrate(version, np.linspace(0, 1, 40))
    assert verify_model_dir(version).novelty is not None
    registry = _load(model_copy)
    assert registry.get("tiny").calibration is not None and registry.get("tiny").calibration.count == 40
    write_calibration(
        version / "novelty.npz", "neg_elbo_bits", np.linspace(0, 2, 40)
    )  # same shape, new numbers
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        verify_model_dir(version)
    refused = _load(model_copy)
    assert "tiny" not in refused.models
    assert "novelty.npz: sha256 mismatch" in refused.failures["tiny"]


def test_a_file_that_disagrees_with_its_manifest_refuses_the_version(model_copy):
    version = model_copy / "tiny" / "1"
    _calibrate(version, np.linspace(0, 1, 40))
    manifest = json.loads((version / "model.json").read_text())
    manifest["novelty"]["count"] = 41
    (version / "model.json").write_text(json.dumps(manifest))
    refused = _load(model_copy)
    assert "expected scores float64 (41,)" in refused.failures["tiny"]


def test_an_unknown_statistic_refuses_the_version_with_the_reason(model_copy):
    version = model_copy / "tiny" / "1"
    _calibrate(version, np.linspace(0, 1, 40), statistic="likelihood_ratio")
    refused = _load(model_copy)
    assert "unknown novelty statistic 'likelihood_ratio'" in refused.failures["tiny"]


# --- through /v1/reconstruct --------------------------------------------------------------------------------


def test_a_manifest_without_calibration_answers_novelty_without_p_values(client, digit_pngs):
    r = client.post("/v1/reconstruct", json={"images": [encode_png_b64(digit_pngs[0])], "model": "tiny"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["p_values"] is None and body["novel"] is None and body["calibration_images"] is None
    assert "ships no novelty calibration file" in body["p_values_reason"]
    assert body["novelty_statistic"] == "neg_elbo_bits"  # a Bernoulli likelihood is not a code length
    assert body["novelty"][0] == pytest.approx(body["scores"][0] / (784 * math.log(2)), rel=1e-6)
    assert body["alpha"] == 0.05  # the setting's default
    assert len(body["kl"]) == len(body["complexity"]) == len(body["codec_bits_per_dim"]) == 1


def encode_png_b64(png: bytes) -> str:
    import base64

    return base64.b64encode(png).decode("ascii")


def test_p_values_and_flags_from_the_calibration_file(model_copy, digit_pngs):
    images = [encode_png_b64(png) for png in digit_pngs[:4]]
    with serve(model_copy) as c:
        plain = c.post("/v1/reconstruct", json={"images": images, "model": "tiny"}).json()
    novelty = np.array(plain["novelty"])
    # Calibration: 19 values, the first image's statistic among them; p by hand for each image.
    calibration = np.sort(np.r_[np.linspace(novelty.min() - 0.05, novelty.max() + 0.05, 18), novelty[0]])
    _calibrate(model_copy / "tiny" / "1", calibration)
    with serve(model_copy, novelty_alpha=0.5) as c:
        body = c.post("/v1/reconstruct", json={"images": images, "model": "tiny"}).json()
        strict = c.post("/v1/reconstruct", json={"images": images, "model": "tiny", "alpha": 0.01}).json()
        form = c.post("/v1/reconstruct", files=[("files", ("d.png", digit_pngs[0], "image/png"))],
                      data={"model": "tiny", "alpha": "0.2"}).json()  # fmt: skip
    expected = [(1 + np.sum(calibration >= s)) / 20 for s in body["novelty"]]
    assert body["p_values"] == pytest.approx(expected)
    assert body["p_values_reason"] is None and body["calibration_images"] == 19
    assert body["alpha"] == 0.5 and body["novel"] == [p <= 0.5 for p in body["p_values"]]
    assert strict["alpha"] == 0.01 and strict["novel"] == [False] * 4  # 1/20 is the smallest p-value
    assert form["alpha"] == 0.2 and form["p_values"] == pytest.approx(expected[:1])
    assert body["scores"] == plain["scores"]  # the old score keeps its meaning


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, "abc", "nan", [0.1], True])
def test_bad_alpha_is_a_422_naming_it(client, digit_pngs, alpha):
    r = client.post("/v1/reconstruct", json={"images": [encode_png_b64(digit_pngs[0])], "alpha": alpha})
    assert r.status_code == 422, r.text
    assert "alpha" in r.text


def test_nan_alpha_in_a_form_is_a_422(client, digit_pngs):
    files = [("files", ("d.png", digit_pngs[0], "image/png"))]
    r = client.post("/v1/reconstruct", files=files, data={"alpha": "NaN"})
    assert r.status_code == 422 and "alpha" in r.text


# --- real data: the committed fashion model -----------------------------------------------------------------


FASHION_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fashion" / "t10k-evaluation-20.npz"


def test_mnist_digits_are_more_novel_than_fashion_test_images_under_the_fashion_model(tmp_path, mnist_arrays):
    from training.novelty import held_out_split

    shutil.copytree(MODELS / "fashion" / "1", tmp_path / "fashion" / "1")
    with np.load(FASHION_FIXTURE, allow_pickle=False) as npz:
        fashion, indices = npz["images"], npz["indices"]
    _, evaluate = held_out_split(10_000)
    assert set(indices.tolist()) <= set(np.asarray(evaluate).tolist())  # images calibration never saw
    inside = [encode_png_b64(encode_png(image[None] / 255.0)) for image in fashion]
    digits = [encode_png_b64(encode_png(x / 255.0)) for x in mnist_arrays["x_test"][:20]]
    with serve(tmp_path, default_model="fashion") as c:
        own = c.post("/v1/reconstruct", json={"images": inside}).json()
        other = c.post("/v1/reconstruct", json={"images": digits}).json()
    assert own["novelty_statistic"] == "complexity_zlib_up" and own["calibration_images"] == 5000
    # The old score ranks digits as *more* typical (Nalisnick et al. 2019); the novelty statistic does not.
    assert np.median(other["scores"]) < np.median(own["scores"])
    assert min(other["novelty"]) > np.median(own["novelty"])
    # At alpha 0.05 about one in twenty in-distribution images is flagged; these twenty give 4 (fixed images).
    assert sum(other["novel"]) == 20 and sum(own["novel"]) <= 5


# --- the calibration writer ---------------------------------------------------------------------------------


def test_the_calibration_writer_computes_what_reconstruct_answers(
    client, models_dir, digit_pngs, mnist_digits
):
    from training.novelty import statistics

    statistic, values = statistics(models_dir / "tiny" / "1", mnist_digits[0][:8], chunk=3)
    images = [encode_png_b64(png) for png in digit_pngs[:8]]
    body = client.post("/v1/reconstruct", json={"images": images, "model": "tiny"}).json()
    assert statistic == body["novelty_statistic"]
    assert values.tolist() == pytest.approx(body["novelty"], rel=1e-6)


def test_the_writer_appends_and_replaces_its_section_keeping_other_fields_text():
    from training.novelty import _with_novelty, _without_novelty

    text = '{\n  "a": 0.00001,\n  "b": [1, 2]\n}\n'
    added = _with_novelty(text, {"count": 20})
    assert added == '{\n  "a": 0.00001,\n  "b": [1, 2],\n  "novelty": {\n    "count": 20\n  }\n}\n'
    assert _without_novelty(added) == text
    assert _with_novelty(_without_novelty(added), {"count": 21}).count('"novelty"') == 1


def test_npy_output_of_novelty_and_of_absent_p_values(client, digit_pngs):
    import io

    body = {"images": [encode_png_b64(png) for png in digit_pngs[:3]], "model": "tiny"}
    npy = {"accept": "application/x-npy"}
    r = client.post("/v1/reconstruct?output=novelty", json=body, headers=npy)
    assert r.status_code == 200 and np.load(io.BytesIO(r.content)).shape == (3,)
    r = client.post("/v1/reconstruct?output=p_values", json=body, headers=npy)
    assert r.status_code == 422 and "not part of this response" in r.json()["error"]
