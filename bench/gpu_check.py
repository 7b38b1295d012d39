"""On a GPU host: prove the CUDA provider path; raw and data-plane items/s at batch 1, 64 and 1024.

    python -m bench.gpu_check [--models-dir models] [--seconds 2] > gpu.json

1. Raw onnxruntime sessions with the CUDA execution provider (the service's own session options), checking
   `get_providers()` really lists CUDA, then items/s per graph and batch size (I/O binding, as the service).
2. The service's data plane in process (ModelRegistry with provider=cuda, batchers included) for the same
   calls, so the gap between the two is the cost of our batching layer on a GPU.
3. One HTTP round trip per route through the ASGI app, with /v1/models reporting the CUDA provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 64, 1024)


def _rate(fn: Any, items: int, seconds: float) -> float:
    fn()  # warm-up: cuDNN picks its algorithms for this shape here
    done, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        fn()
        done += items
    return done / (time.perf_counter() - tic)


def raw_table(models_dir: Path, seconds: float, provider: str) -> list[dict[str, Any]]:
    from service.inference.runtime import Graph, session_options
    from vae_contract.manifest import list_model_names, model_dir, verify_model_dir

    rows = []
    for name in list_model_names(models_dir):
        path = model_dir(models_dir, name)
        manifest = verify_model_dir(path)
        for role in ("encoder", "decoder"):
            spec = getattr(manifest, role)
            graph = Graph(path / spec.file, spec, session_options(0, 1), provider)
            for batch in BATCHES:
                shape = (batch, *manifest.image.shape) if role == "encoder" else (batch, manifest.latent_dim)
                x = np.random.default_rng(0).random(shape, dtype=np.float32)
                rate = _rate(lambda g=graph, x=x: g.run(x), batch, seconds)
                rows.append(
                    {
                        "model": name,
                        "graph": role,
                        "batch": batch,
                        "providers": graph.providers,
                        "raw_items_per_s": round(rate),
                    }
                )
    return rows


async def plane_table(
    models_dir: Path, seconds: float, provider: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from service.config import Settings
    from service.inference import ModelRegistry

    settings = Settings(
        models_dir=models_dir,
        provider=provider,
        max_batch_size=1024,
        max_queue=65536,
        max_latents_per_request=4096,
        max_images_per_request=4096,
    )
    registry = ModelRegistry(settings)
    await asyncio.to_thread(registry.load)
    rows = []
    for name, model in registry.models.items():
        c, h, w = model.manifest.image.shape
        for batch in BATCHES:
            images = np.random.default_rng(0).random((batch, c, h, w), dtype=np.float32)
            latents = np.random.default_rng(0).standard_normal((batch, model.latent_dim), dtype=np.float32)
            for role, call in (
                ("encoder", lambda m=model, x=images: m.encode(x)),
                ("decoder", lambda m=model, z=latents: m.decode(z)),
            ):
                await call()
                done, tic = 0, time.perf_counter()
                while time.perf_counter() - tic < seconds:
                    # 8 concurrent requests keep the batcher and the device busy, as concurrent clients do.
                    await asyncio.gather(*(call() for _ in range(8)))
                    done += 8 * batch
                rows.append(
                    {
                        "model": name,
                        "graph": role,
                        "batch": batch,
                        "plane_items_per_s": round(done / (time.perf_counter() - tic)),
                    }
                )
    readiness = registry.readiness()
    await registry.close()
    return rows, readiness


def http_check(models_dir: Path, provider: str) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    with TestClient(create_app(Settings(models_dir=models_dir, provider=provider))) as client:
        models = client.get("/v1/models").json()
        sample = client.post("/v1/sample", json={"n": 4, "seed": 1})
        v2 = client.post(
            "/v2/models/mnist-decoder/infer",
            json={"inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]},
        )
        return {
            "ready": client.get("/readyz").status_code,
            "models": models,
            "sample_status": sample.status_code,
            "v2_status": v2.status_code,
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    import onnxruntime as ort

    report: dict[str, Any] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    report["raw"] = raw_table(args.models_dir, args.seconds, args.provider)
    report["plane"], report["readiness"] = asyncio.run(
        plane_table(args.models_dir, args.seconds, args.provider)
    )
    report["http"] = http_check(args.models_dir, args.provider)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
