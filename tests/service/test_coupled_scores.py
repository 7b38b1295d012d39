"""A channel-coupled (PixelCNN++) colour model with residual blocks, trained and exported by the project's
own code from real emoji and served: the export passes its parity check, the manifest states the coupled
layout, and the reconstruct score equals the code length plus KL that training computes in PyTorch."""

import json
from pathlib import Path

import pytest

from tests.emoji_models import train_and_export

pytestmark = pytest.mark.timeout(240)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "emoji"


@pytest.fixture(scope="module")
def coupled_model(tmp_path_factory):
    return train_and_export(
        tmp_path_factory, "coupled", conv_channels=(8, 16), channel_coupling=True, res_blocks=1
    )


def test_manifest_states_the_coupled_layout(coupled_model):
    from training.export import PARITY_TOLERANCE
    from vae_contract.manifest import read_manifest

    root, _ = coupled_model
    manifest = read_manifest(root / "coupled" / "1")
    assert manifest.channel_coupling and manifest.mixture_components == 2
    assert manifest.decoder.outputs[1].shape == ["batch", 2 * 10, 16, 16]  # K (1 + 2*3 + 3)
    assert manifest.parity is not None and max(manifest.parity.values()) <= PARITY_TOLERANCE
    assert manifest.training["res_blocks"] == 1


def test_reconstruct_score_is_the_training_side_code_length(coupled_model, serve_app):
    import torch

    from training.gaussians import kl_divergence
    from training.likelihoods import discretized_logistic_nll
    from vae_contract.imaging import decode_image, prepare_image
    from vae_contract.manifest import read_manifest

    root, model = coupled_model
    png = (FIXTURES / "twitter-1f600.png").read_bytes()
    with serve_app(root) as client:
        response = client.post("/v1/reconstruct", files=[("files", ("e.png", png, "image/png"))])
    assert response.status_code == 200, response.text
    x = prepare_image(decode_image(png), read_manifest(root / "coupled" / "1").image)[None]
    with torch.no_grad():
        xt = torch.from_numpy(x).double()
        double = model.double().eval()
        mean, log_var = double.encode(xt)
        nll = discretized_logistic_nll(double.decode_logits(mean), xt, coupled=True)
        expected = float(nll[0]) + float(kl_divergence(mean, log_var)[0])
        kl = float(kl_divergence(mean, log_var)[0])
        uncoupled = float(discretized_logistic_nll(double.decode_logits(mean)[:, :14], xt)[0]) + kl
    model.float()
    score = response.json()["scores"][0]
    assert score == pytest.approx(expected, rel=1e-4)
    assert score != pytest.approx(uncoupled, rel=1e-4)  # the coefficients are applied, not ignored


def test_manifests_without_the_field_are_uncoupled_and_a_wrong_layout_is_refused(coupled_model, tmp_path):
    import shutil

    from vae_contract.manifest import ManifestError, read_manifest

    root, _ = coupled_model
    folder = tmp_path / "m"
    shutil.copytree(root / "coupled" / "1", folder)
    raw = json.loads((folder / "model.json").read_text())
    del raw["channel_coupling"]  # as every manifest written before the field existed
    (folder / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="decoder tensor shapes"):
        read_manifest(folder)  # 20 maps are not K (1 + 2*3) for K = 2
    raw["likelihood"], raw["mixture_components"], raw["channel_coupling"] = "bernoulli", None, True
    raw["decoder"]["outputs"] = raw["decoder"]["outputs"][:1]
    (folder / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="channel_coupling needs likelihood discretized_logistic"):
        read_manifest(folder)
    committed = Path(__file__).parents[2] / "models" / "emoji" / "1"
    if committed.exists():
        old = read_manifest(committed)
        assert "channel_coupling" not in json.loads((committed / "model.json").read_text())
        assert old.channel_coupling is False and old.decoder.outputs[1].shape[1] == 35
