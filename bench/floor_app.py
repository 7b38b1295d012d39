"""The floor under the server's CPU per request: the peers' scenario (one latent in, one base64 PNG out) with
no framework at all, so that `bench.cpu_per_request` can say how much of the service's CPU per request is the
HTTP server and the work itself, which no framework change can remove.

A bare ASGI callable under uvicorn (httptools, uvloop, no access log, 1 worker), in one of two modes:

- `http`: reads the body and answers a stored copy of the answer to the benchmark's request (computed once at
  start). What is left is uvicorn's protocol, the ASGI call and the socket writes.
- `work`: the same plus exactly the work the service does on its fastest path: orjson parse, one onnxruntime
  run on a session with the service's options (`service.inference.runtime.session_options`: one intra-op
  thread, spinning off), the PNG written by `vae_contract.imaging.encode_png`, base64 and orjson out. No
  validation, no limits, no metrics, no logging, no batching: what a request costs before any guarantee.

    BENCH_FLOOR_MODE=work BENCH_FLOOR_MODEL_DIR=models/mnist/1 \\
        .venv/bin/uvicorn --factory bench.floor_app:app --port 8100 --http httptools --loop uvloop
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from vae_contract.imaging import encode_png
from vae_contract.manifest import read_manifest

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = (b"content-type", b"application/json")


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _decoder(model_dir: Path) -> Callable[[bytes], bytes]:
    import onnxruntime as ort

    from service.inference.runtime import session_options

    session = ort.InferenceSession(
        str(model_dir / "decoder.onnx"), session_options(1, 1), providers=["CPUExecutionProvider"]
    )

    def decode(body: bytes) -> bytes:
        z = np.asarray(orjson.loads(body)["latents"], dtype=np.float32)
        (images,) = session.run(None, {"z": z})
        pngs = [base64.b64encode(encode_png(img)).decode() for img in images]
        return orjson.dumps({"images": pngs})

    return decode


def create_app(mode: str, model_dir: Path) -> Callable[[dict, Receive, Send], Awaitable[None]]:
    decode = _decoder(model_dir)
    # The answer to the latent bench.cpu_per_request sends (PNG sizes vary with the image).
    latent = np.random.default_rng(1).standard_normal(read_manifest(model_dir).latent_dim).round(5).tolist()
    fixed = decode(orjson.dumps({"latents": [latent]}))

    async def app(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await _body(receive)
        if scope["path"] == "/readyz":
            answer = b'{"status":"ready"}'
        else:
            answer = decode(body) if mode == "work" else fixed
        # A declared length, as every framework sends it (uvicorn would otherwise chunk the body).
        headers = [JSON, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def app() -> Callable[[dict, Receive, Send], Awaitable[None]]:
    """uvicorn factory: mode and model folder from the environment."""
    mode = os.environ.get("BENCH_FLOOR_MODE", "work")
    if mode not in ("http", "work"):
        raise SystemExit(f"BENCH_FLOOR_MODE must be http or work, not {mode!r}")
    return create_app(mode, Path(os.environ["BENCH_FLOOR_MODEL_DIR"]))
