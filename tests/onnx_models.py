"""Tiny model folders built directly with `onnx.helper`: no torch, no training, milliseconds to make.

`write_model` writes `<models_dir>/<name>/<version>/{encoder.onnx, decoder.onnx, model.json}` for a linear VAE
on `image` = (C, H, W): encoder mean = flatten(x) @ W_e, log_var = 0; decoder x = sigmoid(z @ W_d). With
`overflow=True` both graphs end in Exp instead and have large weights, so inputs inside every limit make
them overflow to inf: the shape of a real model pushed outside its range. The `models_dir` and `client`
fixtures below, imported into a test module, run it on such models without torch.

`write_linear_vae` writes the same kind of folder for given weights with biases (tests/mnist_models.py fits
them to real MNIST), with a preview and the manifest's dataset and metrics records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vae_contract.manifest import (
    PREVIEW_FILE,
    DatasetSpec,
    EvaluationMetrics,
    GraphSpec,
    Manifest,
    TensorSpec,
    sha256_file,
    verify_model_dir,
    write_manifest,
)

OPSET = 17


def _graph(
    name: str, inp: str, in_shape: list, outs: list[tuple[str, list]], nodes: list, inits: list
) -> bytes:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(inp, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_model(
    models_dir: Path,
    name: str = "lin",
    *,
    latent_dim: int = 2,
    image: tuple[int, int, int] = (1, 8, 8),
    version: int = 1,
    overflow: bool = False,
) -> Path:
    c, h, w = image
    pixels = c * h * w
    rng = np.random.default_rng(0)
    scale = 1000.0 if overflow else 0.1
    w_enc = (rng.standard_normal((pixels, latent_dim)) * scale).astype(np.float32)
    w_dec = (rng.standard_normal((latent_dim, pixels)) * scale).astype(np.float32)
    last = "Exp" if overflow else "Sigmoid"
    encoder = _graph(
        "encoder",
        "x",
        ["batch", c, h, w],
        [("mean", ["batch", latent_dim]), ("log_var", ["batch", latent_dim])],
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w_enc"], ["lin"]),
            helper.make_node(last if overflow else "Identity", ["lin"], ["mean"]),
            helper.make_node("Mul", ["lin", "zero"], ["log_var"]),
        ],
        [numpy_helper.from_array(w_enc, "w_enc"), numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    decoder = _graph(
        "decoder",
        "z",
        ["batch", latent_dim],
        [("x", ["batch", c, h, w])],
        [
            helper.make_node("MatMul", ["z", "w_dec"], ["lin"]),
            helper.make_node(last, ["lin"], ["act"]),
            helper.make_node("Reshape", ["act", "shape"], ["x"]),
        ],
        [
            numpy_helper.from_array(w_dec, "w_dec"),
            numpy_helper.from_array(np.array([-1, c, h, w], dtype=np.int64), "shape"),
        ],
    )
    folder = Path(models_dir) / name / str(version)
    folder.mkdir(parents=True)
    (folder / "encoder.onnx").write_bytes(encoder)
    (folder / "decoder.onnx").write_bytes(decoder)
    dataset = DatasetSpec(name="none", source="onnx.helper", train_examples=0, test_examples=0)
    write_manifest(
        folder,
        _bernoulli_manifest(
            folder, name, version, latent_dim, (c, h, w), "linear test model built with onnx.helper", dataset
        ),
    )
    return folder


def _bernoulli_manifest(
    folder: Path,
    name: str,
    version: int,
    latent_dim: int,
    shape: tuple[int, int, int],
    description: str,
    dataset: DatasetSpec,
    metrics: Any = None,
) -> Manifest:
    """The manifest of `folder`'s encoder.onnx (x -> mean, log_var) and decoder.onnx (z -> x), Bernoulli."""
    c, h, w = shape
    img = ["batch", c, h, w]
    return Manifest(
        name=name,
        version=version,
        created=datetime(2026, 1, 1, tzinfo=UTC),
        description=description,
        latent_dim=latent_dim,
        image={"channels": c, "height": h, "width": w},
        likelihood="bernoulli",
        encoder=GraphSpec(
            file="encoder.onnx",
            sha256=sha256_file(folder / "encoder.onnx"),
            inputs=[TensorSpec(name="x", shape=img)],
            outputs=[
                TensorSpec(name="mean", shape=["batch", latent_dim]),
                TensorSpec(name="log_var", shape=["batch", latent_dim]),
            ],
        ),
        decoder=GraphSpec(
            file="decoder.onnx",
            sha256=sha256_file(folder / "decoder.onnx"),
            inputs=[TensorSpec(name="z", shape=["batch", latent_dim])],
            outputs=[TensorSpec(name="x", shape=img)],
        ),
        training={},
        dataset=dataset,
        metrics=metrics,
        opset=OPSET,
        exporters={"onnx": onnx.__version__},
    )


@dataclass(frozen=True)
class LinearVAE:
    """float32 weights of mean = flatten(x) @ w_enc + b_enc, log_var (a constant), and
    x = sigmoid(z @ w_dec + b_dec)."""

    w_enc: np.ndarray  # (C H W, D)
    b_enc: np.ndarray  # (D,)
    log_var: np.ndarray  # (D,)
    w_dec: np.ndarray  # (D, C H W)
    b_dec: np.ndarray  # (C H W,)

    @property
    def latent_dim(self) -> int:
        return int(self.w_enc.shape[1])


def write_linear_vae(
    models_dir: Path,
    name: str,
    vae: LinearVAE,
    *,
    image: tuple[int, int, int],
    dataset: DatasetSpec,
    metrics: EvaluationMetrics | None = None,
    description: str = "",
    version: int = 1,
) -> Path:
    """A verified version folder for `vae`: graphs, preview.png and model.json, as training.export lays
    one out."""
    from vae_contract.imaging import encode_png, make_grid

    c, h, w = image
    d = vae.latent_dim
    consts = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in vars(vae).items()}
    encoder = _graph(
        "encoder",
        "x",
        ["batch", c, h, w],
        [("mean", ["batch", d]), ("log_var", ["batch", d])],
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w_enc"], ["proj"]),
            helper.make_node("Add", ["proj", "b_enc"], ["mean"]),
            helper.make_node("Mul", ["mean", "zero"], ["zeros"]),  # (batch, D), to broadcast log_var over
            helper.make_node("Add", ["zeros", "log_var_const"], ["log_var"]),
        ],
        [
            *(numpy_helper.from_array(consts[k], k) for k in ("w_enc", "b_enc")),
            numpy_helper.from_array(consts["log_var"], "log_var_const"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    decoder = _graph(
        "decoder",
        "z",
        ["batch", d],
        [("x", ["batch", c, h, w])],
        [
            helper.make_node("MatMul", ["z", "w_dec"], ["proj"]),
            helper.make_node("Add", ["proj", "b_dec"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["act"]),
            helper.make_node("Reshape", ["act", "shape"], ["x"]),
        ],
        [
            *(numpy_helper.from_array(consts[k], k) for k in ("w_dec", "b_dec")),
            numpy_helper.from_array(np.array([-1, c, h, w], dtype=np.int64), "shape"),
        ],
    )
    folder = Path(models_dir) / name / str(version)
    folder.mkdir(parents=True)
    (folder / "encoder.onnx").write_bytes(encoder)
    (folder / "decoder.onnx").write_bytes(decoder)
    # The preview training.export writes: 64 decodes of z ~ N(0, I) from seed 0, eight to a row.
    z = np.random.default_rng(0).standard_normal((64, d), dtype=np.float32)
    samples = 1 / (1 + np.exp(-(z @ consts["w_dec"] + consts["b_dec"])))
    grid = make_grid(samples.reshape(64, c, h, w), columns=8)
    (folder / PREVIEW_FILE).write_bytes(encode_png(grid, compress_level=9))
    manifest = _bernoulli_manifest(folder, name, version, d, (c, h, w), description, dataset, metrics)
    write_manifest(folder, manifest)
    verify_model_dir(folder)
    return folder


# --- fixtures: import them into a test module to run it on these models instead of the trained ones --------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny` (latent 8) and `tiny-2d` (latent 2) on 1x28x28, the names and shapes of the trained fixtures."""
    root = tmp_path_factory.mktemp("onnx-models")
    write_model(root, "tiny", latent_dim=8, image=(1, 28, 28))
    write_model(root, "tiny-2d", latent_dim=2, image=(1, 28, 28))
    return root


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[Any]:
    """A TestClient over `models_dir` whose app has run its lifespan."""
    from starlette.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    with TestClient(create_app(Settings(models_dir=models_dir, provider="cpu", grpc_port=0))) as c:
        yield c
