"""The limit: onnxruntime called in-process on the same model with the service's own session options.

No HTTP, no serialization, no batching queue: one `InferenceSession.run()` after another on a prepared batch
(on CUDA through I/O binding, as the service does). Whatever the service reaches is a fraction of this.

    .venv/bin/python -m bench.raw [--models-dir models] [--model mnist] [--provider cpu] [--duration 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.config import Settings
from service.inference.runtime import requested_providers, session_options
from vae_contract.manifest import Manifest, read_manifest


@dataclass
class RawModel:
    """Both graphs of one model, opened exactly as the service opens them."""

    manifest: Manifest
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession

    @classmethod
    def open(cls, path: Path, provider: str = "cpu", settings: Settings | None = None) -> RawModel:
        settings = settings or Settings(provider=provider)  # VAE_INTRA_OP_THREADS etc. apply as they do there
        manifest = read_manifest(path)
        options = session_options(settings.intra_op_threads, settings.inter_op_threads)
        providers = requested_providers(provider, ort.get_available_providers())

        def session(file: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(path / file), sess_options=options, providers=providers)

        return cls(manifest, session(manifest.encoder.file), session(manifest.decoder.file))

    @property
    def providers(self) -> list[str]:
        return list(self.decoder.get_providers())

    def inputs(self, graph: str, batch: int, seed: int = 0) -> np.ndarray:
        """A realistic batch: prior draws for the decoder, decoded digits for the encoder."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((batch, self.manifest.latent_dim), dtype=np.float32)
        if graph == "decoder":
            return z
        (images,) = self.decoder.run(None, {self.manifest.decoder.inputs[0].name: z})
        return np.ascontiguousarray(images, dtype=np.float32)

    def caller(self, graph: str, x: np.ndarray) -> Callable[[], object]:
        session = self.encoder if graph == "encoder" else self.decoder
        spec = self.manifest.encoder if graph == "encoder" else self.manifest.decoder
        input_name, outputs = spec.inputs[0].name, [t.name for t in spec.outputs]
        if "CUDAExecutionProvider" not in session.get_providers():
            return lambda: session.run(outputs, {input_name: x})

        def bound() -> object:  # the service's CUDA path: inputs copied once, outputs copied back once
            binding = session.io_binding()
            binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for name in outputs:
                binding.bind_output(name, "cuda", 0)
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()

        return bound


def items_per_second(call: Callable[[], object], batch: int, duration_s: float, rounds: int = 3) -> float:
    """Best of `rounds` timed windows of back-to-back calls, after a warm-up call; items/s."""
    call()
    best = 0.0
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        deadline = start + duration_s / rounds
        while True:
            call()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls * batch / (now - start))
    return best


def measure(model: RawModel, graph: str, batch: int, duration_s: float) -> dict:
    rate = items_per_second(model.caller(graph, model.inputs(graph, batch)), batch, duration_s)
    return {
        "graph": graph,
        "batch": batch,
        "items_per_s": round(rate, 2),
        "calls_per_s": round(rate / batch, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--provider", choices=["cpu", "cuda", "auto"], default="cpu")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    args = parser.parse_args(argv)
    from vae_contract.manifest import model_dir

    model = RawModel.open(model_dir(args.models_dir, args.model), args.provider)
    rows = [measure(model, g, b, args.duration) for g in ("decoder", "encoder") for b in args.batches]
    print(json.dumps({"model": args.model, "providers": model.providers, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
