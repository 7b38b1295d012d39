"""ONNX export: parity with PyTorch, manifest round trip, tamper detection, dynamic batch, immutability,
and refusal of garbage (non-finite weights, outputs or metrics; a full disk) with nothing published."""

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.export import PARITY_TOLERANCE, ExportError, export_vae
from vae_contract.manifest import ManifestError, read_manifest, verify_model_dir


@pytest.fixture(scope="module")
def exported(models_dir):
    return models_dir / "tiny" / "1"


def test_layout_and_no_external_data(exported):
    names = sorted(p.name for p in exported.iterdir())
    # MNIST's classes are the digits, so the export also ships their latent Gaussians for label sampling.
    assert names == ["classes.npz", "decoder.onnx", "encoder.onnx", "model.json", "preview.png"]
    assert verify_model_dir(exported).conditional.classes == list("0123456789")
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
    with pytest.raises(ManifestError, match=r"unreadable|not JSON"):
        read_manifest(version)


def test_versions_are_immutable_unless_forced(trained_small, tmp_path, mnist_digits):
    from vae_contract.manifest import DatasetSpec

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
    from training import export
    from vae_contract.manifest import DatasetSpec

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
    assert not (tmp_path / "bad").exists()  # neither the version nor the model folder it would have made


def test_autoencoder_baseline_is_not_exported(tmp_path):
    from training.config import TrainConfig
    from training.models import build_model
    from vae_contract.manifest import DatasetSpec

    model = build_model(TrainConfig(variational=False, latent_dim=2, hidden_dims=(8,)), (1, 28, 28))
    spec = DatasetSpec(name="x", source="x", train_examples=1, test_examples=1)
    with pytest.raises(ExportError, match="only variational"):
        export_vae(model, tmp_path, "ae", dataset=spec)
    shutil.rmtree(tmp_path, ignore_errors=True)


def _random_vae(**overrides):
    """An untrained tiny MLP VAE: enough for the export checks, and no training time."""
    from training.config import TrainConfig
    from training.models import build_model

    torch.manual_seed(0)
    config = TrainConfig(**{"latent_dim": 2, "hidden_dims": (16,), "test_limit": 32} | overrides)
    return build_model(config, (1, 28, 28)).eval()


def _spec():
    from vae_contract.manifest import DatasetSpec

    return DatasetSpec(name="mnist", source="test", train_examples=1, test_examples=32)


def test_non_finite_weights_are_refused_before_any_work(tmp_path):
    model = _random_vae()
    with torch.no_grad():
        model.to_log_var.weight[0, 3] = float("nan")
        model.to_mean.bias[1] = float("inf")
    with pytest.raises(
        ExportError, match=r"non-finite weights in to_mean.bias \(1 of 2\), to_log_var.weight"
    ):
        export_vae(model, tmp_path, "nan", dataset=_spec())
    assert list(tmp_path.iterdir()) == []


def test_non_finite_metrics_are_refused(tmp_path):
    from vae_contract.manifest import EvaluationMetrics

    metrics = EvaluationMetrics(
        split="test", examples=32, binarized=False, neg_elbo=float("nan"), reconstruction=1.0, kl=1.0,
        active_units=2, measured_with="hand",
    )  # fmt: skip
    with pytest.raises(ExportError, match="non-finite test metrics \\(neg_elbo=nan\\)"):
        export_vae(_random_vae(), tmp_path, "nan", dataset=_spec(), metrics=metrics)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_outputs_are_refused_not_skipped_by_the_parity_max(tmp_path):
    model = _random_vae()
    with torch.no_grad():  # finite weights whose log_var overflows float32 on ordinary images
        model.to_log_var.weight.fill_(3e38)
        model.to_log_var.bias.fill_(3e38)
    with pytest.raises(ExportError, match=r"encoder log_var: onnxruntime output has \d+ non-finite values"):
        export_vae(model, tmp_path, "inf", dataset=_spec())
    assert list(tmp_path.iterdir()) == []


def _checkpoint(tmp_path, data_dir):
    from training.checkpoints import save_checkpoint

    model = _random_vae(data_dir=str(data_dir))
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, model.config)
    return path


def test_cli_refuses_an_evaluation_file_with_nan(tmp_path, data_dir, capsys):
    from training.cli import main

    evaluation = tmp_path / "eval.json"
    evaluation.write_text(
        '{"examples": 32, "neg_elbo": NaN, "reconstruction": 1.0, "kl": 1.0, "active_units": 2,'
        ' "device": "cpu", "seconds": 1.0}'
    )
    args = ["--models-dir", str(tmp_path / "models"), "--name", "m", "--metrics", str(evaluation)]
    assert main(["export", "--checkpoint", str(_checkpoint(tmp_path, data_dir)), *args]) == 3
    assert "non-finite test metrics (neg_elbo=nan)" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_full_disk_is_one_line_and_publishes_nothing(tmp_path, data_dir, capsys, monkeypatch):
    from training import export
    from training.cli import main

    def disk_full(module, example, input_name, outputs, path):
        path.write_bytes(b"\x08\x01" * 64)  # part of a graph, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export, "_export_graph", disk_full)
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    args = ["--models-dir", str(models), "--name", "m", "--k", "0", "--device", "cpu"]
    assert main(["export", "--checkpoint", str(_checkpoint(tmp_path, data_dir)), *args]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("export failed: cannot write ") and "encoder.onnx: No space left on device" in err
    assert "nothing was published" in err
    assert list((models / "m").iterdir()) == []  # no version folder, no staging folder


def test_forced_replacement_keeps_the_old_version_when_the_rename_fails(tmp_path, monkeypatch):
    from training.export import _publish

    target, staging = tmp_path / "m" / "1", tmp_path / "m" / ".1.new"
    target.mkdir(parents=True)
    (target / "model.json").write_text("old")
    staging.mkdir()
    (staging / "model.json").write_text("new")
    real_rename = Path.rename

    def failing(self, other):
        if self == staging:
            raise OSError(errno.EIO, "I/O error")
        return real_rename(self, other)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError):
        _publish(staging, target)
    assert (target / "model.json").read_text() == "old"
    monkeypatch.setattr(Path, "rename", real_rename)
    _publish(staging, target)
    assert (target / "model.json").read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["1"]


def test_an_evaluation_file_of_another_shape_is_one_clear_error(tmp_path, mnist):
    from training.export import read_evaluation

    path = tmp_path / "eval.json"
    for body in ("[]", '{"examples": 32}'):
        path.write_text(body)
        with pytest.raises(ValueError, match="not the output of `python -m training eval` \\(missing "):
            read_evaluation(path, mnist.limited(0, 32))
