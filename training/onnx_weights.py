"""A published version's networks rebuilt in PyTorch from the weights inside its ONNX graphs.

Checkpoints stay in `runs/`, outside the repository; a version folder is what survives. Its manifest carries
the training config (so the modules can be rebuilt) and its graphs carry every weight as an initializer named
after the module path (`vae.decoder_body.2.weight`), except the group net's output convolution, which the
exporter constant-folds with its padding to a multiple of 8 maps (`PaddedOutputConv`) into one `pad*`
initializer per call. Those are recovered by shape: the padded (weight, bias) pairs of the inner and the outer
net, tried in both assignments, and the one whose rebuilt decoder reproduces `decoder.onnx` is kept. Nothing
is trusted unchecked: `rebuild` refuses a rebuild that differs from any of the version's graphs by more than
the export's parity tolerance.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig
from training.errors import ExportError
from training.models import VAE
from vae_contract.manifest import Manifest, verify_model_dir

PREFIX = "vae."
TOLERANCE = 1e-4


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _output_convs(vae: VAE) -> list[str]:
    """State-dict prefixes of the group nets' padded output convolutions (inner first)."""
    return [name.removesuffix(".weight") for name, _ in vae.named_parameters() if _is_output_conv(vae, name)]


def _is_output_conv(vae: VAE, name: str) -> bool:
    from training.pixel_groups import PaddedOutputConv

    module = vae.get_submodule(name.rsplit(".", 1)[0])
    return name.endswith(".weight") and isinstance(module, PaddedOutputConv)


def _padded_candidates(init: dict[str, np.ndarray], maps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct (weight, bias) of padded output convolutions among the `pad*` constants, in graph order."""
    weights = [v for k, v in init.items() if k.startswith("pad") and v.ndim == 4 and v.shape[0] >= maps]
    biases = [v for k, v in init.items() if k.startswith("pad") and v.ndim == 1 and v.shape[0] >= maps]
    unique_w: list[np.ndarray] = []
    for w in weights:
        if not any(np.array_equal(w, u) for u in unique_w):
            unique_w.append(w)
    unique_b: list[np.ndarray] = []
    for b in biases:
        if not any(np.array_equal(b, u) for u in unique_b):
            unique_b.append(b)
    return [(w[:maps], b[:maps]) for w, b in zip(unique_w, unique_b, strict=False)]


@torch.no_grad()
def rebuild(model_dir: Path) -> tuple[VAE, Manifest]:
    """The version's VAE with the weights of its graphs, checked against each graph; ExportError if not."""
    model_dir = Path(model_dir)
    manifest = verify_model_dir(model_dir)
    config = TrainConfig.from_dict(manifest.training)
    vae = VAE(config, manifest.image.shape).eval()
    state = vae.state_dict()
    found: dict[str, torch.Tensor] = {}
    graphs = [manifest.encoder.file, manifest.decoder.file] + (
        [manifest.scorer.file] if manifest.scorer else []
    )
    for file in graphs:
        for name, value in _initializers(model_dir / file).items():
            key = name.removeprefix(PREFIX)
            if name.startswith(PREFIX) and key in state and key not in found:
                found[key] = torch.from_numpy(value.copy())
    # Output convolutions whose maps are already a multiple of 8 run unpadded and keep their own names.
    convs = [prefix for prefix in _output_convs(vae) if prefix + ".weight" not in found]
    missing = [k for k in state if k not in found and k.rsplit(".", 1)[0] not in convs]
    if missing:
        raise ExportError(f"{model_dir}: no initializer for {', '.join(missing[:5])}")
    decoder_path = model_dir / manifest.decoder.file
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((4, vae.latent_dim), dtype=np.float32))
    expected = _run(decoder_path, {"z": z.numpy()})[0]
    if convs:
        maps = state[convs[0] + ".bias"].shape[0]
        candidates = _padded_candidates(_initializers(decoder_path), maps)
        if len(candidates) != len(convs):
            raise ExportError(
                f"{decoder_path}: {len(candidates)} padded output convolutions, {len(convs)} nets"
            )
        for order in itertools.permutations(candidates):
            for prefix, (weight, bias) in zip(convs, order, strict=True):
                found[prefix + ".weight"], found[prefix + ".bias"] = (
                    torch.from_numpy(weight.copy()),
                    torch.from_numpy(bias.copy()),
                )
            vae.load_state_dict(found)
            if float(np.abs(vae.decode(z).numpy() - expected).max()) <= TOLERANCE:
                break
    else:
        vae.load_state_dict(found)
    _check(vae, manifest, model_dir, z)
    return vae, manifest


def _run(path: Path, feeds: dict[str, Any]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _check(vae: VAE, manifest: Manifest, model_dir: Path, z: torch.Tensor) -> None:
    """ExportError unless the rebuilt modules give each graph's outputs (decoder image, encoder, scorer)."""
    from training.export import ScorerGraph

    c, h, w = manifest.image.shape
    x = np.random.default_rng(1).integers(0, 256, (4, c, h, w)).astype(np.float32) / 255
    diffs = {
        "decoder": np.abs(
            _run(model_dir / manifest.decoder.file, {"z": z.numpy()})[0] - vae.decode(z).numpy()
        ),
    }
    mean, log_var = _run(model_dir / manifest.encoder.file, {"x": x})
    ref_mean, ref_log_var = vae.encode(torch.from_numpy(x))
    diffs["encoder"] = np.abs(np.concatenate([mean - ref_mean.numpy(), log_var - ref_log_var.numpy()]))
    if manifest.scorer is not None:
        (nll,) = _run(model_dir / manifest.scorer.file, {"x": x})
        ref = ScorerGraph(vae)(torch.from_numpy(x)).numpy()
        diffs["scorer"] = np.abs(nll - ref) / np.abs(
            ref
        )  # thousands of nats: relative, as the export's check
    for role, diff in diffs.items():
        if not float(diff.max()) <= TOLERANCE:
            raise ExportError(
                f"{model_dir}: rebuilt modules differ from {role} graph by {float(diff.max()):.3g}"
            )
