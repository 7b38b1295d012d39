"""The Open Inference Protocol's view of the data plane, shared by its REST (`service.http.routes.v2`) and
gRPC (`service.grpc.server`) adapters: the server and model metadata, and the infer sequence.

Every VAE `<name>` is two OIP models, `<name>-encoder` and `<name>-decoder`; a request names one, optionally
with a version, and runs on that graph through the model's batchers and the limits of `inference.limits`.
No web framework here: each adapter decodes its own wire format (a `WireRequest`), encodes the answer, and
renders the errors of `service.errors`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from service import __version__
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
PLATFORM = "onnxruntime_onnx"


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


# --- metadata -----------------------------------------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": "vae-service", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(registry: ModelRegistry, oip_name: str, version: str | None) -> dict[str, Any]:
    """The graph's name, every loaded version (newest last), platform and tensor signature."""
    ref = resolve_graph(registry, oip_name, version)
    inputs, outputs = ref.signature()
    loaded = registry.loaded_versions().get(ref.model.name, [ref.model.manifest.version])
    return {
        "name": ref.oip_name,
        "versions": [str(v) for v in loaded],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    }


# --- inference ----------------------------------------------------------------------------------------------


class WireRequest(Protocol):
    """An infer request as one adapter decodes it from its wire format, asked in this order."""

    def wanted_outputs(self, names: list[str]) -> list[tuple[str, bool]]:
        """(name, binary?) for each output to return, in request order (every output when none is named)."""
        ...

    def input_shape(self, want: dict[str, Any], settings: Settings, *, images: bool) -> list[int]:
        """The one input's shape, with its name, datatype and shape checked against `want` and the limits."""
        ...

    def input_array(self, shape: list[int]) -> np.ndarray:
        """The input's values as float32 of `shape`."""
        ...


W = TypeVar("W", bound=WireRequest)


@dataclass(frozen=True)
class Inference(Generic[W]):
    request: W
    ref: GraphRef
    outputs: list[tuple[str, bool]]  # (name, binary?), in the order the answer lists them
    results: dict[str, np.ndarray]

    @property
    def version(self) -> str:
        return str(self.ref.model.manifest.version)


async def infer(
    registry: ModelRegistry,
    settings: Settings,
    oip_name: str,
    version: str | None,
    read: Callable[[], Awaitable[W]],
) -> Inference[W]:
    """Resolve the graph, then read the request (`read`: an unknown graph is refused before a body is read),
    check it against the graph's signature, bound the answer's size from the input's shape before its values
    are decoded, and run it."""
    ref = resolve_graph(registry, oip_name, version)
    request = await read()
    inputs, outputs = ref.signature()
    wanted = request.wanted_outputs([o["name"] for o in outputs])
    shape = request.input_shape(inputs[0], settings, images=ref.role == "encoder")
    bound_response(ref, shape[0], wanted, settings)
    return Inference(request, ref, wanted, await run_graph(ref, request.input_array(shape), settings))
