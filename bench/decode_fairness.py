"""How long does a one-image request wait for image decoding while large requests fill the decode pool?
(Not a test: a measurement, for docs/benchmarks.md.)

In process, on the service's ImagePool at its defaults (2 decode threads, 1,024 images admitted): `--heavy`
requests of 256 smooth 240x240 RGB PNGs (legal: just under the 64 MiB budget of decoded pixels) start
together, then a one-image mnist request arrives every 20 ms until they finish; prints the small requests'
latency:

    python -m bench.decode_fairness [--heavy 3] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

import numpy as np
from PIL import Image

from service.config import Settings
from service.inference.decode_pool import ImagePool
from vae_contract.manifest import ImageSpec


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


async def _run(args: argparse.Namespace, waits: list[float]) -> None:
    settings = Settings(provider="cpu")
    pool = ImagePool.from_settings(settings)
    y, x = np.mgrid[0:240, 0:240]
    big = [
        _png(np.stack([(x + i) % 256, (y + i) % 256, (x + y) % 256], -1).astype(np.uint8)) for i in range(8)
    ]
    heavy_blobs = [big[i % len(big)] for i in range(256)]
    small = _png(np.zeros((28, 28), np.uint8))
    emoji, mnist = ImageSpec(channels=3, height=32, width=32), ImageSpec(channels=1, height=28, width=28)
    started = time.perf_counter()
    heavy = [asyncio.create_task(pool.prepare(heavy_blobs, emoji, settings)) for _ in range(args.heavy)]
    while not all(task.done() for task in heavy):
        t = time.perf_counter()
        await pool.prepare([small], mnist, settings)
        waits.append(time.perf_counter() - t)
        await asyncio.sleep(0.02)
    await asyncio.gather(*heavy)
    total = time.perf_counter() - started
    print(f"{args.heavy} x 256 images of 240x240 decoded in {total:.2f} s")
    pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", type=int, default=3, help="at most 3 fit the default decode queue")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    waits: list[float] = []
    for _ in range(args.repeat):
        asyncio.run(_run(args, waits))
    p = np.percentile(waits, [50, 99]) * 1000
    print(f"one-image requests meanwhile: p50 {p[0]:.0f} ms, p99 {p[1]:.0f} ms, "
          f"max {max(waits) * 1000:.0f} ms "
          f"over {len(waits)}")  # fmt: skip


if __name__ == "__main__":
    main()
