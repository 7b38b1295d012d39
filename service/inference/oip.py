"""The Open Inference Protocol's view of the data plane, shared by its REST (`routes.v2`) and gRPC adapters.

Every VAE `<name>` is two OIP models, `<name>-encoder` and `<name>-decoder`; a request names one, optionally
with a version, and runs on that graph through the model's batchers and the limits of `inference.limits`.
No web framework here: each adapter parses its own wire format and renders the errors of `service.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import ModelNotFound, shown
from service.inference.limits import (
    check_latent_values,
    check_pixel_values,
    check_response_bytes,
    response_bytes,
)
from service.inference.model import VAEModel
from service.inference.registry import ModelRegistry

ROLES = ("encoder", "decoder")
EXTENSIONS = ["binary_tensor_data", "model_repository_metadata"]


@dataclass(frozen=True)
class GraphRef:
    """One OIP model: a served VAE and which of its two graphs."""

    model: VAEModel
    role: str  # "encoder" | "decoder"

    @property
    def oip_name(self) -> str:
        return f"{self.model.name}-{self.role}"

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spec = getattr(self.model.manifest, self.role)

        def tensors(items: list[Any]) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "datatype": "FP32", "shape": [-1 if d == "batch" else d for d in t.shape]}
                for t in items
            ]

        return tensors(spec.inputs), tensors(spec.outputs)


def resolve_graph(registry: ModelRegistry, oip_name: str, version: str | None) -> GraphRef:
    base, _, role = oip_name.rpartition("-")
    if role not in ROLES or not base:
        raise ModelNotFound(
            f"unknown model {shown(oip_name)}; OIP models are <name>-encoder and <name>-decoder"
        )
    model = registry.get(base)  # the newest loaded; unknown or unavailable models fail here
    if version is None:
        return GraphRef(model, role)
    loaded = registry.loaded_versions().get(base, [])
    number = int(version) if version.isascii() and version.isdigit() and len(version) <= 9 else None
    if number is None or number not in loaded:
        raise ModelNotFound(
            f"model {shown(oip_name)} has no loaded version {shown(version, 32)}; loaded: {loaded}"
        )
    return GraphRef(registry.get(base, number), role)


def bound_response(ref: GraphRef, batch: int, wanted: list[tuple[str, bool]], settings: Settings) -> None:
    _, outputs = ref.signature()
    per_item = {o["name"]: int(np.prod(o["shape"][1:])) for o in outputs}
    estimate = sum(response_bytes(floats=batch * per_item[name], binary=binary) for name, binary in wanted)
    check_response_bytes(estimate, settings)


async def run_graph(ref: GraphRef, x: np.ndarray, settings: Settings) -> dict[str, np.ndarray]:
    if ref.role == "encoder":
        check_pixel_values(x, ref.model.manifest.image, name="x")
        encoding = await ref.model.encode(x)
        return {"mean": encoding.mean, "log_var": encoding.log_var}
    check_latent_values(x, settings, name="input 'z'")
    return {"x": await ref.model.decode(x)}
