"""An MLServer custom runtime serving the decoder over the V2 (Open Inference) protocol.

POST /v2/models/decoder/infer {"inputs": [{"name": "z", "shape": [1, D], "datatype": "FP32", "data": [...]}]}
-> outputs [{"name": "png", "datatype": "BYTES", "shape": [1, 1], "data": ["<base64 png>"]}]. The harness
writes settings.json and model-settings.json (parallel workers, adaptive batching) beside a copy of nothing:
`uri` points at the model folder. Adaptive batching concatenates requests along the first axis and splits the
answer again, so predict works on (N, D) either way.
"""

from __future__ import annotations

import numpy as np
from common import PngDecoder  # bench/peers/ is on the path: the script's folder, or PYTHONPATH
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class DecoderRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra if self.settings.parameters else {}
        self.decoder = PngDecoder(self.settings.parameters.uri, int((extra or {}).get("threads", 0)))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        z = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32).reshape(-1, self.decoder.latent_dim)
        pngs = self.decoder(z)
        return InferenceResponse(
            model_name=self.name, outputs=[StringCodec.encode_output("png", pngs, use_bytes=False)]
        )
