"""The work every peer does per request, written once: latents (N, D) -> N base64 PNGs.

Imported inside the peers' own virtual environments, so it needs only numpy, Pillow and onnxruntime (no
`service` imports). Pixels are rounded as `vae_contract.imaging.image_to_uint8` rounds them and the PNG is
written
by Pillow at compress_level 1, as the service wrote it when the peers were first measured, so every peer does
the same work per request and the comparison is between the servers.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


class PngDecoder:
    """One decoder session; `threads` intra-op threads (0: onnxruntime's default, one per core)."""

    def __init__(self, model_dir: str | Path, threads: int = 0):
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / "model.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_dir / "decoder.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.latent_dim = int(manifest["latent_dim"])
        self(np.zeros((1, self.latent_dim), dtype=np.float32))  # warm-up

    def __call__(self, z: np.ndarray) -> list[str]:
        (images,) = self.session.run(None, {self.input_name: np.ascontiguousarray(z, dtype=np.float32)})
        pixels = np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (N, C, H, W)
        out = []
        for img in pixels:
            buf = io.BytesIO()
            Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(
                buf, format="PNG", compress_level=1
            )
            out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        return out
