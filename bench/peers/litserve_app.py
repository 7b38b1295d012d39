"""LitServe serving the decoder, as its docs write a LitAPI, with its batching on.

    python bench/peers/litserve_app.py --model-dir models/mnist/1 --port 8000 --workers 2 --threads 1 \
        --max-batch-size 64 --batch-timeout 0.001

POST /predict {"latent": [z...]} -> {"image": "<base64 png>"}. Batching: LitServer(max_batch_size,
batch_timeout) stacks the decoded requests; `workers_per_device` inference processes on the CPU.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np
from common import PngDecoder  # bench/peers/ is on the path: the script's folder, or PYTHONPATH


class DecoderAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device):
        self.decoder = PngDecoder(self.model_dir, self.threads)

    def decode_request(self, request):
        return np.asarray(request["latent"], dtype=np.float32)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, z):
        return self.decoder(z if z.ndim == 2 else z[None])

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {"image": output if isinstance(output, str) else output[0]}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1, help="workers_per_device")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads per worker")
    p.add_argument("--max-batch-size", type=int, default=1)
    p.add_argument("--batch-timeout", type=float, default=0.0)
    args = p.parse_args()
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    api = DecoderAPI(args.model_dir, args.threads, **(batching if args.max_batch_size > 1 else {}))
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
