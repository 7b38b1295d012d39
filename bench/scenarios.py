"""What each benchmark scenario sends and how its answer is checked, and the model it is sent to.

A scenario builds a pool of prepared requests per target kind (`ours`, `naive`, a peer) before the clock
starts, and checks one answer for the right shape, so a sweep never benchmarks fast error responses.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.load import RequestSpec
from bench.raw import RawModel

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY = "application/x-npy"
FALLBACK_MODELS = Path("/tmp/bench-models")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    latent_dim: int
    shape: tuple[int, int, int]  # (C, H, W)
    pngs: tuple[bytes, ...]  # images for /v1/encode: decoded prior draws of this very model


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """(C, H, W) float in [0, 1] -> PNG bytes."""
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def json_body(payload: dict) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), {"content-type": "application/json"}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    items: int  # items per request (latents decoded, images encoded, samples drawn)
    raw: tuple[str, int]  # the in-process call it is compared with: (graph, batch)
    build: Callable[[str, ModelInfo], list[RequestSpec]]  # (target kind, model) -> request pool
    check: Callable[[httpx.Response, ModelInfo], str | None]  # None when the answer is right
    peers: bool = False  # the peer servers answer it too (they serve only this one)


def _decode1_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    rng = np.random.default_rng(1)
    specs = []
    for _ in range(64):
        body, headers = json_body({"latents": rng.standard_normal((1, m.latent_dim)).round(5).tolist()})
        specs.append(RequestSpec("POST", "/v1/decode", body, {**headers, "accept": "image/png"}))
    return specs


def _decode1_check(r: httpx.Response, m: ModelInfo) -> str | None:
    if not r.content.startswith(PNG_MAGIC):
        return f"expected a PNG, got {r.headers.get('content-type')}"
    size = Image.open(io.BytesIO(r.content)).size
    return None if size == (m.shape[2], m.shape[1]) else f"PNG of size {size}"


def _decode1_b64_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    """The peer scenario: one latent in, JSON with one base64 PNG out, in each target's own protocol."""
    from bench.peers import PEERS

    rng = np.random.default_rng(1)
    specs = []
    for _ in range(64):
        z = rng.standard_normal(m.latent_dim).round(5).tolist()
        if kind in PEERS:
            specs.append(RequestSpec("POST", PEERS[kind].path, *json_body(PEERS[kind].body(z))))
        else:  # ours, and the naive app (which writes base64 PNGs when asked with ?format=png)
            path = "/v1/decode?format=png" if kind == "naive" else "/v1/decode"
            specs.append(RequestSpec("POST", path, *json_body({"latents": [z]})))
    return specs


def _first_long_string(value: object) -> str | None:
    """The base64 PNG wherever a protocol puts it: the first long string in the JSON answer."""
    if isinstance(value, str):
        return value if len(value) > 64 else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for item in items:
        if (found := _first_long_string(item)) is not None:
            return found
    return None


def _decode1_b64_check(r: httpx.Response, m: ModelInfo) -> str | None:
    text = _first_long_string(r.json())
    if text is None:
        return f"no base64 string in {r.text[:200]}"
    png = base64.b64decode(text, validate=True)
    if not png.startswith(PNG_MAGIC):
        return "the base64 string is no PNG"
    size = Image.open(io.BytesIO(png)).size
    return None if size == (m.shape[2], m.shape[1]) else f"PNG of size {size}"


DECODE_BATCH = 256


def _decode256_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    rng = np.random.default_rng(2)
    specs = []
    for _ in range(8):
        z = rng.standard_normal((DECODE_BATCH, m.latent_dim), dtype=np.float32)
        if kind == "naive":  # the baseline speaks JSON lists only
            body, headers = json_body({"latents": z.round(5).tolist()})
        else:
            body, headers = npy_bytes(z), {"content-type": NPY}
        specs.append(RequestSpec("POST", "/v1/decode", body, {**headers, "accept": NPY}))
    return specs


def _decode256_check(r: httpx.Response, m: ModelInfo) -> str | None:
    if r.headers.get("content-type", "").startswith(NPY):
        shape = np.load(io.BytesIO(r.content), allow_pickle=False).shape
    else:
        shape = np.asarray(r.json()["images"], dtype=np.float32).shape
    return None if shape == (DECODE_BATCH, *m.shape) else f"images of shape {shape}"


def _encode1_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    return [
        RequestSpec("POST", "/v1/encode", *json_body({"images": [base64.b64encode(png).decode()]}))
        for png in m.pngs
    ]


def _encode1_check(r: httpx.Response, m: ModelInfo) -> str | None:
    shape = np.asarray(r.json()["mean"]).shape
    return None if shape == (1, m.latent_dim) else f"mean of shape {shape}"


SAMPLE_N = 8


def _sample_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    return [
        RequestSpec("POST", "/v1/sample", *json_body({"n": SAMPLE_N, "seed": seed})) for seed in range(256)
    ]


def _sample_check(r: httpx.Response, m: ModelInfo) -> str | None:
    images = r.json()["images"]
    return None if len(images) == SAMPLE_N else f"{len(images)} images"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "decode1_png", "/v1/decode, 1 latent -> PNG", 1, ("decoder", 1), _decode1_build, _decode1_check
        ),
        Scenario(
            "decode1_b64",
            "/v1/decode, 1 latent -> JSON with one base64 PNG (the peers' scenario)",
            1,
            ("decoder", 1),
            _decode1_b64_build,
            _decode1_b64_check,
            peers=True,
        ),
        Scenario(
            "decode256_npy",
            f"/v1/decode, {DECODE_BATCH} latents -> npy",
            DECODE_BATCH,
            ("decoder", DECODE_BATCH),
            _decode256_build,
            _decode256_check,
        ),
        Scenario(
            "encode1",
            "/v1/encode, 1 image (JSON base64 PNG)",
            1,
            ("encoder", 1),
            _encode1_build,
            _encode1_check,
        ),
        Scenario(
            "sample",
            f"/v1/sample, n={SAMPLE_N} (JSON base64 PNGs)",
            SAMPLE_N,
            ("decoder", SAMPLE_N),
            _sample_build,
            _sample_check,
        ),
    )
}


def resolve_models(models_dir: Path) -> tuple[Path, bool]:
    """The models folder to serve; when it has none, a tiny model trained here (and fallback=True)."""
    from vae_contract.manifest import list_model_names

    if models_dir.is_dir() and list_model_names(models_dir):
        return models_dir, False
    if not (FALLBACK_MODELS.is_dir() and list_model_names(FALLBACK_MODELS)):
        print(
            f"[bench] {models_dir}/ has no model; training a tiny fallback into {FALLBACK_MODELS}", flush=True
        )
        py, run_dir = sys.executable, "/tmp/bench-run"
        common = ["--data-dir", str(ROOT / "data")]
        subprocess.run(
            [py, "-m", "training", "train", "--run-dir", run_dir, "--epochs", "1", "--train-limit", "2000",
             "--test-limit", "200", "--latent-dim", "8", "--hidden-dims", "64", "--no-progress", *common],
            cwd=ROOT, check=True,
        )  # fmt: skip
        subprocess.run(
            [py, "-m", "training", "export", "--checkpoint", f"{run_dir}/last.pt", "--models-dir",
             str(FALLBACK_MODELS), "--name", "mnist", "--k", "0", *common],
            cwd=ROOT, check=True,
        )  # fmt: skip
    return FALLBACK_MODELS, True


def default_model(models_dir: Path) -> str:
    """The model the service answers with when a request names none (service.inference.registry's rule)."""
    from vae_contract.manifest import list_model_names

    names = list_model_names(models_dir)
    chosen = os.environ.get("VAE_DEFAULT_MODEL") or ("mnist" if "mnist" in names else sorted(names)[0])
    return chosen


def model_info(models_dir: Path, name: str, raw: RawModel) -> ModelInfo:
    from vae_contract.manifest import model_dir

    path = model_dir(models_dir, name)
    pngs = [png_bytes(img) for img in raw.inputs("encoder", 64, seed=3)]  # decoded digits
    shape = raw.manifest.image.shape
    return ModelInfo(name, path, raw.manifest.latent_dim, shape, tuple(pngs))
