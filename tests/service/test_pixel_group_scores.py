"""A pixel-group colour model (an autoregressive decoder over the pixels of each 2x2 cell, with neighbour
anchors), trained and exported by the project's own code from real emoji and served: the scorer graph passes
its parity check, the manifest states the layout, the reconstruct score equals the code length plus KL that
training computes in PyTorch, and a manifest that disagrees with its files is refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.emoji_models import train_and_export

pytestmark = pytest.mark.timeout(300)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "emoji"


@pytest.fixture(scope="module", params=[4, 7])  # one level of groups, and two
def grouped_model(tmp_path_factory, request):
    return train_and_export(
        tmp_path_factory, "grouped", conv_channels=(8, 16), channel_coupling=True, pixel_groups=request.param,
        neighbour_anchors=True, context_width=8, context_layers=2,
    )  # fmt: skip


def test_manifest_states_the_groups_and_the_scorer(grouped_model):
    from training.export import PARITY_TOLERANCE
    from vae_contract.manifest import read_manifest

    root, model = grouped_model
    manifest = read_manifest(root / "grouped" / "1")
    assert manifest.pixel_groups == model.config.pixel_groups and manifest.channel_coupling
    assert [t.name for t in manifest.decoder.outputs] == ["x"]  # z alone does not give the likelihood
    assert manifest.scorer is not None and manifest.scorer.file == "scorer.onnx"
    assert [t.shape for t in manifest.scorer.outputs] == [["batch"]]
    assert manifest.parity is not None and set(manifest.parity) >= {"scorer_max_abs_diff"}
    assert max(manifest.parity.values()) <= PARITY_TOLERANCE
    assert manifest.training["neighbour_anchors"] is True


def test_reconstruct_score_is_the_training_side_code_length(grouped_model, serve_app):
    import torch

    from training.gaussians import kl_divergence
    from training.losses import model_nll
    from vae_contract.imaging import decode_image, prepare_image
    from vae_contract.manifest import read_manifest

    root, model = grouped_model
    png = (FIXTURES / "twitter-1f600.png").read_bytes()
    with serve_app(root) as client:
        response = client.post("/v1/reconstruct", files=[("files", ("e.png", png, "image/png"))])
        decoded = client.post("/v1/decode", json={"model": "grouped", "latents": [[0.0] * 4]})
    assert response.status_code == 200, response.text
    assert decoded.status_code == 200, decoded.text
    x = prepare_image(decode_image(png), read_manifest(root / "grouped" / "1").image)[None]
    with torch.no_grad():
        xt = torch.from_numpy(x).double()
        double = model.double().eval()
        mean, log_var = double.encode(xt)
        nll = float(model_nll(double, double.decode_logits(mean, xt), xt)[0])
        kl = float(kl_divergence(mean, log_var)[0])
        greedy = float(model_nll(double, double.decode_logits(mean), xt)[0])  # maps of the decoded image
    model.float()
    score = response.json()["scores"][0]
    assert score == pytest.approx(nll + kl, rel=1e-4)
    assert score != pytest.approx(greedy + kl, rel=1e-4)  # the scorer reads the uploaded pixels


def test_scorer_graph_agrees_with_the_training_code_on_real_images(grouped_model):
    import onnxruntime as ort
    import torch

    from training.export import ScorerGraph
    from vae_contract.imaging import decode_image, prepare_image
    from vae_contract.manifest import read_manifest

    root, model = grouped_model
    spec = read_manifest(root / "grouped" / "1").image
    x = np.stack([prepare_image(decode_image(p.read_bytes()), spec) for p in sorted(FIXTURES.glob("*.png"))])
    session = ort.InferenceSession(
        str(root / "grouped" / "1" / "scorer.onnx"), providers=["CPUExecutionProvider"]
    )
    (nll,) = session.run(None, {"x": x.astype(np.float32)})
    with torch.no_grad():
        ref = ScorerGraph(model.eval())(torch.from_numpy(x.astype(np.float32))).numpy()
    assert nll.shape == (len(x),) and np.all(nll > 0)
    np.testing.assert_allclose(nll, ref, rtol=1e-5)


def test_a_manifest_that_disagrees_with_its_scorer_is_refused(grouped_model, tmp_path):
    from vae_contract.manifest import ManifestError, read_manifest, verify_model_dir

    root, _ = grouped_model
    folder = tmp_path / "m"
    shutil.copytree(root / "grouped" / "1", folder)
    raw = json.loads((folder / "model.json").read_text())
    without = {k: v for k, v in raw.items() if k != "scorer"}
    (folder / "model.json").write_text(json.dumps(without))
    with pytest.raises(ManifestError, match="scorer graph is given exactly when pixel_groups"):
        read_manifest(folder)
    (folder / "model.json").write_text(json.dumps(raw))
    (folder / "scorer.onnx").write_bytes((folder / "scorer.onnx").read_bytes()[:-10])
    with pytest.raises(ManifestError, match=r"scorer\.onnx: sha256 mismatch"):
        verify_model_dir(folder)
