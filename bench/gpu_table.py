"""The GPU table: items/s at batch 1, 64 and 1024 for encode and decode of every served model, raw and via
the service (`python -m bench.run --gpu-table --provider cuda`).
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from bench.load import RequestSpec, run_load_sync
from bench.raw import RawModel, measure
from bench.scenarios import NPY, json_body, npy_bytes, png_bytes
from bench.servers import ours_server


def gpu_table(models_dir: Path, args, out: Path) -> list[dict]:
    """Items/s at batch 1, 64, 1024 for encode and decode of every served model: raw, then via the service.

    The service runs with VAE_MAX_BATCH_SIZE and the per-request caps at the largest batch, so a request of
    1024 items is one onnxruntime call there too; `--gpu-concurrency` clients keep the device busy.
    """
    from vae_contract.manifest import list_model_names, model_dir

    batches = args.gpu_batches
    names = args.gpu_models or list_model_names(models_dir)
    rows: list[dict] = []
    for name in names:
        raw = RawModel.open(model_dir(models_dir, name), args.provider)
        for graph in ("encoder", "decoder"):
            for batch in batches:
                r = measure(raw, graph, batch, args.raw_duration)
                rows.append({"model": name, "path": "raw", "providers": raw.providers, **r})
                print(f"[bench] gpu raw {name} {graph} b={batch}: {r['items_per_s']:.0f} items/s", flush=True)
    top = max(batches)
    env = {
        "VAE_MAX_BATCH_SIZE": str(top),
        "VAE_MAX_IMAGES_PER_REQUEST": str(top),
        "VAE_MAX_LATENTS_PER_REQUEST": str(max(top, 4096)),
        "VAE_MAX_QUEUE": str(max(8192, 4 * top * args.gpu_concurrency)),
        "VAE_MAX_BODY_BYTES": str(256 * 1024 * 1024),
    }
    server = ours_server(args, models_dir, names[0], out, env)
    try:
        server.start()
        listing = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        providers = {m["name"]: m.get("providers") for m in listing.get("models", [])}
        for name in names:
            raw = RawModel.open(model_dir(models_dir, name), "cpu")  # only to draw inputs
            for graph in ("encoder", "decoder"):
                for batch in batches:
                    specs = _gpu_requests(raw, name, graph, batch)
                    result = run_load_sync(
                        server.url, specs, concurrency=args.gpu_concurrency, duration_s=args.duration,
                        warmup=2 * args.gpu_concurrency, items_per_request=batch, client=args.client,
                    )  # fmt: skip
                    rows.append({
                        "model": name, "path": "service", "providers": providers.get(name), "graph": graph,
                        "batch": batch,
                        "items_per_s": result.items_per_s, "calls_per_s": result.requests_per_s,
                        "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors,
                    })  # fmt: skip
                    print(
                        f"[bench] gpu service {name} {graph} b={batch}: {result.items_per_s:.0f} items/s "
                        f"{result.errors or ''}",
                        flush=True,
                    )
    finally:
        server.stop()
    return rows


def _gpu_requests(raw: RawModel, name: str, graph: str, batch: int) -> list[RequestSpec]:
    """Decode: the npy fast path both ways. Encode: JSON base64 PNGs (the service's only image input)."""
    if graph == "decoder":
        z = raw.inputs("decoder", batch, seed=5)
        headers = {"content-type": NPY, "accept": NPY}
        return [RequestSpec("POST", f"/v1/decode?model={name}", npy_bytes(z), headers)]
    encoded = [base64.b64encode(png_bytes(img)).decode() for img in raw.inputs("encoder", batch, seed=6)]
    body, headers = json_body({"model": name, "images": encoded})
    return [RequestSpec("POST", "/v1/encode", body, {**headers, "accept": NPY})]
