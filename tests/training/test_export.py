"""ONNX export: parity with PyTorch, manifest round trip, tamper detection, dynamic batch, immutability."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.manifest import ManifestError, read_manifest, verify_model_dir
from training.export import PARITY_TOLERANCE, ExportError, export_vae


@pytest.fixture(scope="module")
def exported(models_dir):
    return models_dir / "tiny" / "1"


def test_layout_and_no_external_data(exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["decoder.onnx", "encoder.onnx", "model.json", "preview.png"]
    for graph in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(exported / graph)
        onnx.checker.check_model(model, full_check=True)
        assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
        assert not any(node.op_type.startswith("Random") for node in model.graph.node)


def test_manifest_round_trip_and_contents(exported):
    manifest = verify_model_dir(exported)
    assert manifest.name == "tiny" and manifest.version == 1 and manifest.latent_dim == 8
    assert manifest.image.shape == (1, 28, 28) and manifest.likelihood == "bernoulli"
    assert manifest.encoder.inputs[0].shape == ["batch", 1, 28, 28]
    assert [t.name for t in manifest.encoder.outputs] == ["mean", "log_var"]
    assert manifest.metrics is not None and manifest.metrics.neg_elbo > 0
    assert manifest.training["latent_dim"] == 8 and manifest.opset >= 17
    assert set(manifest.exporters) >= {"torch", "onnx"}
    assert {"onnxruntime", "onnxruntime-gpu"} & set(manifest.exporters)  # whichever build is installed
    assert max(manifest.parity.values()) <= PARITY_TOLERANCE
    raw = json.loads((exported / "model.json").read_text())
    assert read_manifest(exported).model_dump(mode="json") == raw | {"created": raw["created"]}


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_and_value_ranges(exported, batch, mnist_digits):
    encoder = ort.InferenceSession(exported / "encoder.onnx", providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(exported / "decoder.onnx", providers=["CPUExecutionProvider"])
    x = mnist_digits[0][:batch]
    mean, log_var = encoder.run(None, {"x": x})
    assert mean.shape == log_var.shape == (batch, 8)
    (images,) = decoder.run(None, {"z": mean})
    assert images.shape == (batch, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    # A trained decoder reconstructs its input far better than the average image does.
    average = mnist_digits[0].mean(0)
    assert np.mean((images - x) ** 2) < np.mean((average - x) ** 2)


def test_hash_mismatch_and_truncation_are_rejected(model_copy):
    version = model_copy / "tiny" / "1"
    graph = version / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        verify_model_dir(version)
    graph.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ManifestError, match="modified or truncated"):
        verify_model_dir(version)
    graph.unlink()
    with pytest.raises(ManifestError, match="graph missing"):
        verify_model_dir(version)


def test_invalid_manifest_is_rejected_on_read(model_copy):
    version = model_copy / "tiny" / "1"
    raw = json.loads((version / "model.json").read_text())
    raw["latent_dim"] = 9
    (version / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="disagree"):
        read_manifest(version)
    (version / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(version)


def test_versions_are_immutable_unless_forced(trained_small, tmp_path, mnist_digits):
    from service.manifest import DatasetSpec

    spec = DatasetSpec(name="mnist", source="test", train_examples=5000, test_examples=300)
    model = trained_small.model
    first = export_vae(model, tmp_path, "m", dataset=spec, real_images=mnist_digits[0][:8])
    assert first == tmp_path / "m" / "1"
    with pytest.raises(ExportError, match="immutable"):
        export_vae(model, tmp_path, "m", dataset=spec, version=1)
    before = (first / "encoder.onnx").stat().st_mtime_ns
    export_vae(model, tmp_path, "m", dataset=spec, version=1, force=True)
    assert (first / "encoder.onnx").stat().st_mtime_ns != before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]  # no staging folders left behind


def test_parity_failure_fails_loudly_and_publishes_nothing(trained_small, tmp_path, monkeypatch):
    from service.manifest import DatasetSpec
    from training import export

    original = export.check_parity

    def drifted(vae, enc, dec, real, seed=0):
        with torch.no_grad():
            vae.to_mean.bias.add_(1.0)  # the PyTorch side no longer matches the exported graph
        try:
            return original(vae, enc, dec, real, seed)
        finally:
            with torch.no_grad():
                vae.to_mean.bias.sub_(1.0)

    monkeypatch.setattr(export, "check_parity", drifted)
    spec = DatasetSpec(name="mnist", source="test", train_examples=1, test_examples=1)
    with pytest.raises(ExportError, match="encoder: onnxruntime differs"):
        export_vae(trained_small.model, tmp_path, "bad", dataset=spec)
    assert list((tmp_path / "bad").iterdir()) == []


def test_autoencoder_baseline_is_not_exported(tmp_path):
    from service.manifest import DatasetSpec
    from training.config import TrainConfig
    from training.models import build_model

    model = build_model(TrainConfig(variational=False, latent_dim=2, hidden_dims=(8,)), (1, 28, 28))
    spec = DatasetSpec(name="x", source="x", train_examples=1, test_examples=1)
    with pytest.raises(ExportError, match="only variational"):
        export_vae(model, tmp_path, "ae", dataset=spec)
    shutil.rmtree(tmp_path, ignore_errors=True)
