"""Per-image cost of /v1/reconstruct in-process (the app over ASGI, JSON with base64 PNGs in and out), for
comparing a checkout with the novelty fields against one without: run it once per checkout, alternating.

    PYTHONPATH=$PWD python -m bench.novelty_cost --models-dir models --model mnist-2d --rounds 20
    PYTHONPATH=/old/checkout python -m bench.novelty_cost --models-dir /old/checkout/models ...
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--model", default="mnist-2d")
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR", "data"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app
    from vae_contract.imaging import encode_png

    with np.load(Path(args.data_dir) / "mnist.npz") as npz:
        x = npz["x_test"][: args.batch].astype(np.float32) / 255
    if args.model.startswith("emoji"):
        x = np.repeat(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), 3, axis=1)
    images = [base64.b64encode(encode_png(img)).decode() for img in x]
    settings = Settings(
        models_dir=Path(args.models_dir), models=[args.model], provider="cpu", grpc_port=0, _env_file=None
    )
    with TestClient(create_app(settings)) as client:
        body = {"images": images, "model": args.model}
        for _ in range(3):
            assert client.post("/v1/reconstruct", json=body).status_code == 200
        times = []
        for _ in range(args.rounds):
            tic = time.perf_counter()
            client.post("/v1/reconstruct", json=body)
            times.append(time.perf_counter() - tic)
    per_image = 1e6 * float(np.median(times)) / args.batch
    print(json.dumps({"model": args.model, "batch": args.batch, "us_per_image_median": round(per_image, 1)}))


if __name__ == "__main__":
    main()
