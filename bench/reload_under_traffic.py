"""Publish a new version of a model under live traffic and count what clients saw.

    .venv/bin/python -m bench.reload_under_traffic --model mnist --new-version 2 --seconds 12

Starts `vae-serve` with its defaults on 127.0.0.1 over a temporary copy of models/ that lacks the new version,
drives it with concurrent clients (decode, sample, reconstruct on the model's default version), copies the new
version in halfway through and sends SIGHUP, then prints every status code seen, how many answers each
version gave, and how long after the signal the first answer from the new version came. Bounded in time;
the server is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.servers import ROOT, Server


def _digit_png() -> str:
    with np.load(ROOT / "data" / "mnist.npz") as npz:
        pixels = npz["x_test"][0, 0]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Traffic:
    """Closed-loop clients over decode, sample and reconstruct; counts statuses and the versions answering."""

    def __init__(self, url: str, latent_dim: int, new_version: int):
        self.url, self.new_version = url, new_version
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.signalled_at: float | None = None
        self.first_new_after_s: float | None = None
        latents = np.random.default_rng(0).standard_normal((1, latent_dim)).round(4).tolist()
        self.bodies = [
            ("/v1/decode", {"latents": latents}),
            ("/v1/sample", {"n": 2, "seed": 1}),
            ("/v1/reconstruct", {"images": [_digit_png()]}),
        ]

    async def client(self, http: httpx.AsyncClient, offset: int, stop_at: float) -> None:
        n = offset
        while time.monotonic() < stop_at:
            path, body = self.bodies[n % len(self.bodies)]
            n += 1
            response = await http.post(self.url + path, json=body)
            self.statuses[response.status_code] += 1
            if response.status_code != 200:
                continue
            version = response.json()["version"]
            self.versions[version] += 1
            if version == self.new_version and self.first_new_after_s is None and self.signalled_at:
                self.first_new_after_s = round(time.monotonic() - self.signalled_at, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--new-version", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)

    source = args.models_dir / args.model / str(args.new_version)
    manifest = json.loads((source / "model.json").read_text())
    with tempfile.TemporaryDirectory(prefix="vae-reload-") as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(args.models_dir, models, ignore=shutil.ignore_patterns("*.tmp*"))
        shutil.rmtree(models / args.model / str(args.new_version))
        server = Server(
            "ours",
            [str(Path(sys.executable).with_name("vae-serve")), "--host", "127.0.0.1", "--port", "{port}"],
            {
                "VAE_MODELS_DIR": str(models),
                "VAE_DEFAULT_MODEL": args.model,
                "VAE_LOG_LEVEL": "info",
                "VAE_GRPC_PORT": "0",
            },
            Path(tmp) / "server.log",
        )
        server.start()
        try:
            result = asyncio.run(_run(server, args, source, models, manifest["latent_dim"]))
        finally:
            server.stop()
        log_lines = [line for line in (Path(tmp) / "server.log").read_text().splitlines() if "loaded" in line]
    print(json.dumps({**result, "reload_log": log_lines[-4:]}, indent=2))
    ok = set(result["statuses"]) == {"200"} and str(args.new_version) in result["versions"]
    return 0 if ok else 1


async def _run(server: Server, args: argparse.Namespace, source: Path, models: Path, latent_dim: int) -> dict:
    traffic = Traffic(server.url, latent_dim, args.new_version)
    stop_at = time.monotonic() + args.seconds
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=args.clients)) as http:
        tasks = [asyncio.create_task(traffic.client(http, i, stop_at)) for i in range(args.clients)]
        await asyncio.sleep(args.seconds / 2)
        # Published as the exporter does: staged beside the model, then renamed into place in one step.
        staging = models / args.model / f".{args.new_version}.publishing"
        await asyncio.to_thread(shutil.copytree, source, staging)
        staging.rename(models / args.model / str(args.new_version))
        traffic.signalled_at = time.monotonic()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        await asyncio.gather(*tasks)
        listing = (await http.get(server.url + "/v1/models")).json()
    served = next(m for m in listing["models"] if m["name"] == args.model)
    return {
        "statuses": {str(k): v for k, v in sorted(traffic.statuses.items())},
        "versions": {str(k): v for k, v in sorted(traffic.versions.items())},
        "seconds_from_sighup_to_first_new_answer": traffic.first_new_after_s,
        "default_version_after": served["version"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
