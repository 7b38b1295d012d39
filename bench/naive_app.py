"""The naive baseline: what a first FastAPI wrapper around the ONNX exports looks like.

One `InferenceSession.run()` per request, pydantic models over JSON lists of floats, responses as JSON lists
(FastAPI's default encoder), PNGs from Pillow's default `save(format="PNG")`, default session options, sync
endpoints in FastAPI's thread pool (what its docs recommend for blocking calls). No batching, no binary
formats. It answers the same routes and request shapes as the service for the benchmark scenarios, so the load
generator can drive both:

    POST /v1/decode  {"latents": [[...]]}       Accept: image/png -> one PNG (first image); else JSON lists
                                                ?format=png -> {"images": ["<base64 png>"]}
    POST /v1/encode  {"images": ["<base64>"]}   -> {"mean": [[...]], "log_var": [[...]]}
    POST /v1/sample  {"n": .., "seed": ..}      -> {"images": ["<base64 png>"], "latents": [[...]]}
    GET  /readyz

It reads its model folder (`models/<name>/<version>`) from the environment, so uvicorn can start it:

    BENCH_NAIVE_MODEL_DIR=models/mnist/1 .venv/bin/uvicorn --factory bench.naive_app:app --port 8100
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request, Response
from PIL import Image
from pydantic import BaseModel


class DecodeRequest(BaseModel):
    latents: list[list[float]]
    model: str | None = None


class EncodeRequest(BaseModel):
    images: list[str]
    model: str | None = None


class SampleRequest(BaseModel):
    n: int = 1
    seed: int | None = None
    model: str | None = None


def _png(image: np.ndarray) -> bytes:
    """(C, H, W) float in [0, 1] -> PNG bytes with Pillow's default settings."""
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def create_app(model_dir: Path, providers: list[str] | None = None) -> FastAPI:
    manifest = json.loads((model_dir / "model.json").read_text())
    channels, height, width = (manifest["image"][k] for k in ("channels", "height", "width"))
    latent_dim = manifest["latent_dim"]
    providers = providers or ["CPUExecutionProvider"]
    decoder = ort.InferenceSession(str(model_dir / "decoder.onnx"), providers=providers)
    encoder = ort.InferenceSession(str(model_dir / "encoder.onnx"), providers=providers)
    app = FastAPI(title="naive VAE baseline")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/decode")
    def decode(body: DecodeRequest, request: Request):
        z = np.asarray(body.latents, dtype=np.float32)
        (images,) = decoder.run(None, {"z": z})
        if "image/png" in request.headers.get("accept", ""):
            return Response(_png(images[0]), media_type="image/png")
        if request.query_params.get("format") == "png":  # the peers' scenario: base64 PNGs in JSON
            return {"images": [base64.b64encode(_png(img)).decode() for img in images]}
        return {"images": images.tolist()}

    @app.post("/v1/encode")
    def encode(body: EncodeRequest):
        batch = []
        for item in body.images:
            img = Image.open(io.BytesIO(base64.b64decode(item))).convert("L" if channels == 1 else "RGB")
            img = img.resize((width, height))
            arr = np.asarray(img, dtype=np.float32) / 255.0
            batch.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        mean, log_var = encoder.run(None, {"x": np.stack(batch)})
        return {"mean": mean.tolist(), "log_var": log_var.tolist()}

    @app.post("/v1/sample")
    def sample(body: SampleRequest):
        rng = np.random.default_rng(body.seed)
        z = rng.standard_normal((body.n, latent_dim)).astype(np.float32)
        (images,) = decoder.run(None, {"z": z})
        return {
            "images": [base64.b64encode(_png(img)).decode() for img in images],
            "latents": z.tolist(),
        }

    return app


def app() -> FastAPI:
    """uvicorn factory (`--factory bench.naive_app:app`): model folder and provider from the environment."""
    provider = os.environ.get("BENCH_NAIVE_PROVIDER", "cpu")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else None
    return create_app(Path(os.environ["BENCH_NAIVE_MODEL_DIR"]), providers)
