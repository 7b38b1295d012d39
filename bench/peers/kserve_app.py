"""KServe's Python ModelServer serving the decoder (V1 protocol), as its custom-model docs write one.

    python bench/peers/kserve_app.py --model_dir models/mnist/1 --http_port 8080 --workers 2 --threads 1

POST /v1/models/decoder:predict {"instances": [[z...]]} -> {"predictions": ["<base64 png>"]}. The Python
ModelServer has no batcher of its own (KServe batches in its agent sidecar, outside this process); its docs
scale it with `--workers` (uvicorn processes sharing the socket).
"""

from __future__ import annotations

import argparse

import numpy as np
from common import PngDecoder  # bench/peers/ is on the path: the script's folder, or PYTHONPATH
from kserve import Model, ModelServer, model_server


class Decoder(Model):
    def __init__(self, name: str, model_dir: str, threads: int):
        super().__init__(name)
        self.model_dir, self.threads = model_dir, threads
        self.decoder: PngDecoder | None = None
        self.load()

    def load(self) -> bool:
        self.decoder = PngDecoder(self.model_dir, self.threads)
        self.ready = True
        return self.ready

    # `--workers N` spawns N processes and pickles the model into each: every one opens its own session.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "decoder": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        assert self.decoder is not None
        return {"predictions": self.decoder(np.asarray(payload["instances"], dtype=np.float32))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads per worker")
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False).start(
        [Decoder("decoder", args.model_dir, args.threads)]
    )
