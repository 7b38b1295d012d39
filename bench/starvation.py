"""Under maximal legal load on one model, does the request timeout hold, and is another model's small request
served? (Not a test: a measurement, for docs/benchmarks.md.)

Starts `vae-serve` (one worker, CPU) with emoji and mnist; `--clients` clients send maximal legal emoji
requests back to back (`/v1/sample` with n = max_sample_n, the pixel-group decoder's costliest call, and
`/v1/reconstruct` with max_images_per_request images, alternating; after a 503 a client waits its
Retry-After) while one probe sends a one-latent mnist decode every `--probe-interval-s`. Reports the emoji
statuses, how late past the request timeout each 504 was answered (all, and leaving out the requests that
opened a new connection, which also waited for it to be accepted), and the probe's latency percentiles.
`--source` serves another checkout (e.g. a `git archive` of the base commit) with this tree's models:

    python -m bench.starvation [--clients 64] [--seconds 40] [--request-timeout-s 10] [--source DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.ports import free_port
from bench.servers import cli_module

ROOT = Path(__file__).resolve().parents[1]


def _emoji_pngs(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


async def _run(url: str, args: argparse.Namespace) -> None:
    # Every client keeps its connection: with httpx's default of 20 kept alive, requests waited for one.
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    images = _emoji_pngs(256)
    heavy: list[tuple[int, float, bool]] = []  # status, seconds, whether it opened a new connection
    probe: list[float] = []
    probe_status: Counter[int] = Counter()
    stop = time.monotonic() + args.seconds
    async with httpx.AsyncClient(base_url=url, timeout=args.request_timeout_s + 30, limits=limits) as client:
        latent_dim = (await client.get("/v1/models/mnist")).json()["latent_dim"]

        async def emoji(i: int) -> None:
            k = 0
            while time.monotonic() < stop:
                started, connected = time.perf_counter(), False

                async def trace(event: str, info: object) -> None:  # httpx's trace extension
                    nonlocal connected
                    connected = connected or event.startswith("connection.connect_tcp")

                try:
                    if (i + k) % 2:
                        body = {"model": "emoji", "n": 256, "seed": k}
                        r = await client.post("/v1/sample", json=body, extensions={"trace": trace})
                    else:
                        body = {"model": "emoji", "images": images}
                        r = await client.post("/v1/reconstruct", json=body, extensions={"trace": trace})
                    status = r.status_code
                except httpx.TransportError:  # e.g. a keep-alive connection the server closed meanwhile
                    status = 0
                heavy.append((status, time.perf_counter() - started, connected))
                k += 1
                if status == 503:  # as a polite client does; retrying at once only loads this process
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)))

        async def mnist() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/decode", json={"model": "mnist", "latents": [[0.0] * latent_dim]}
                    )
                    status = r.status_code
                except httpx.TransportError:
                    status = 0
                probe.append(time.perf_counter() - started)
                probe_status[status] += 1
                await asyncio.sleep(args.probe_interval_s)

        await asyncio.gather(mnist(), *(emoji(i) for i in range(args.clients)))
    statuses = Counter(status for status, _, _ in heavy)
    late = sorted(t - args.request_timeout_s for status, t, _ in heavy if status == 504)
    # A request on a new connection also waits for it to be accepted, which the timeout cannot cover.
    late_open = sorted(t - args.request_timeout_s for status, t, new in heavy if status == 504 and not new)
    print(f"emoji requests (0: connection error): {dict(statuses)}")
    if late:
        print(f"504s answered past the {args.request_timeout_s:g} s timeout by: max {max(late):.2f} s, "
              f"p99 {np.percentile(late, 99):.2f} s, p50 {np.percentile(late, 50):.2f} s "
              f"({len(late)} answers)")  # fmt: skip
    if late_open:
        print(f"  on connections already open: max {max(late_open):.2f} s, "
              f"p99 {np.percentile(late_open, 99):.2f} s ({len(late_open)} answers)")  # fmt: skip
    ok = sorted(t for status, t, _ in heavy if status == 200)
    if ok:
        print(f"emoji 200s: p50 {np.percentile(ok, 50):.2f} s, max {max(ok):.2f} s")
    p = np.percentile(probe, [50, 99]) * 1000
    print(f"mnist decode probe: {dict(probe_status)}; p50 {p[0]:.0f} ms, p99 {p[1]:.0f} ms, "
          f"max {max(probe) * 1000:.0f} ms over {len(probe)} calls")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="source tree to serve (default: this one)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--request-timeout-s", type=float, default=10)
    parser.add_argument("--probe-interval-s", type=float, default=0.05)
    args = parser.parse_args()
    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(args.source.resolve()), "VAE_MODELS_DIR": str(ROOT / "models"),
        "VAE_MODELS": "emoji,mnist", "VAE_PROVIDER": "cpu", "VAE_PORT": str(port), "VAE_GRPC_PORT": "0",
        "VAE_WORKERS": "1", "VAE_RELOAD_INTERVAL_S": "0", "VAE_LOG_LEVEL": "warning",
        "VAE_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
    }  # fmt: skip
    log = Path("/tmp") / f"vae-starvation-{port}.log"
    with log.open("wb") as sink:
        argv = [sys.executable, "-m", cli_module(args.source)]
        proc = subprocess.Popen(argv, env=env, cwd=args.source, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        asyncio.run(_run(url, args))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    main()
