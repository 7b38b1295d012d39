"""The Open Inference Protocol (KServe V2 REST) for the exported graphs, with binary tensor data.

Every VAE `<name>` is addressable as two OIP models: `<name>-encoder` (input `x` -> outputs `mean`, `log_var`)
and `<name>-decoder` (input `z` -> output `x`). `/v2/models/{m}/versions/{v}/...` is answered by that loaded
version exactly (404 naming the loaded ones otherwise), `/v2/models/{m}/...` by the newest loaded one; model
metadata lists every loaded version, newest last. Requests run through the same batchers, limits, API keys and
metrics as `/v1`, and the same limits (`service.inference.limits`). Errors follow the protocol: an HTTP
4xx/5xx with `{"error": "...", "error_type": "..."}`, 400 for bad input (see `routes.error_handlers`).

Binary data (Triton docs/protocol/extension_binary_data.md):
a request whose header `Inference-Header-Content-Length` says N carries N bytes of JSON followed by the raw
little-endian tensors of the inputs that declare `parameters.binary_data_size`, in input order; outputs asked
for with `parameters.binary_data: true` (or request-level `binary_data_output: true`) come back the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from service.config import Settings
from service.errors import InvalidInput, ModelNotFound, Unauthorized, shown
from service.http.deadline import DeadlineRoute
from service.http.deps import registry_of, settings_of
from service.http.error_handlers import INFERENCE_ERRORS, responses
from service.http.paths import V2
from service.inference import oip
from service.inference.limits import check_output_names, check_tensor
from service.inference.oip import resolve_graph

router = APIRouter(prefix=V2, tags=["Open Inference Protocol (v2)"], route_class=DeadlineRoute)

HEADER_LENGTH = "inference-header-content-length"
_META_ERRORS = responses(ModelNotFound, Unauthorized, oip=True)
_INFER_ERRORS = responses(*INFERENCE_ERRORS, oip=True)


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


# --- server and model metadata ------------------------------------------------------------------------------


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json(oip.server_metadata())


@router.get("/health/live", summary="Liveness")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Readiness: every configured model loaded, verified and warm")
async def ready(request: Request) -> Response:
    is_ready = registry_of(request).ready
    return _json({"ready": is_ready}, 200 if is_ready else 503)


@router.get("/models/{model_name}", summary="Model metadata", responses=_META_ERRORS)
@router.get(
    "/models/{model_name}/versions/{version}", summary="Model metadata (versioned)", responses=_META_ERRORS
)
async def model_metadata(request: Request, model_name: str, version: str | None = None) -> Response:
    return _json(oip.model_metadata(registry_of(request), model_name, version))


@router.get("/models/{model_name}/ready", summary="Model readiness", responses=_META_ERRORS)
@router.get(
    "/models/{model_name}/versions/{version}/ready",
    summary="Model readiness (versioned)",
    responses=_META_ERRORS,
)
async def model_ready(request: Request, model_name: str, version: str | None = None) -> Response:
    ref = resolve_graph(registry_of(request), model_name, version)
    return _json({"name": ref.oip_name, "ready": True})


# --- inference ----------------------------------------------------------------------------------------------


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
        if not 0 < n <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {n} does not fit a {len(body)}-byte body")
        json_part, binary = body[:n], body[n:]
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError:
        raise InvalidInput("the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise InvalidInput("the request must be a JSON object")
    return request, binary


def _parameters(owner: dict[str, Any], where: str) -> dict[str, Any]:
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where} parameters must be a JSON object")
    return params


def _flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} parameter {shown(key)} must be true or false")
    return value


def _input_header(
    request: dict[str, Any], want: dict[str, Any], settings: Settings, *, images: bool
) -> tuple[dict[str, Any], list[int]]:
    """The one input tensor's description and its shape, checked against the graph and the limits."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"expected exactly one input, {want['name']!r}")
    tensor = inputs[0]
    name, shape = tensor.get("name"), tensor.get("shape")
    if name == want["name"] and not (
        isinstance(shape, list)
        and shape
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise InvalidInput(f"input {shown(name)} needs a shape: a list of integers")
    check_tensor(name, tensor.get("datatype"), shape if isinstance(shape, list) else [], want, settings,
                 images=images)  # fmt: skip
    assert isinstance(shape, list)  # the name matched, so the shape was checked above
    return tensor, shape


def _input_data(tensor: dict[str, Any], shape: list[int], binary: bytes) -> np.ndarray:
    """The tensor's values, from the binary section or from JSON `data`, as float32 of `shape`."""
    name, count = tensor["name"], int(np.prod(shape))
    params = _parameters(tensor, f"input {shown(name)}")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size != count * 4 or len(binary) != size:
            raise InvalidInput(
                f"binary_data_size {str(size)[:32]} does not match shape {shape} of FP32 ({count * 4} bytes) "
                f"or the {len(binary)} bytes sent"
            )
        array = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        if binary:
            raise InvalidInput("binary data was sent but no input declares binary_data_size")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput(
                f"input {shown(name)} data must be a list of numbers (flat or nested, row-major)"
            )
        try:
            array = np.asarray(data)  # no dtype: strings and booleans must not be coerced to numbers
        except (TypeError, ValueError):
            raise InvalidInput(
                f"input {shown(name)} data must be numbers (flat or nested, row-major)"
            ) from None
        if array.dtype.kind not in "iuf":
            raise InvalidInput(f"input {shown(name)} data must be numbers (flat or nested, row-major)")
        if array.size != count:
            raise InvalidInput(f"input {shown(name)} has {array.size} values; shape {shape} needs {count}")
        array = array.reshape(shape)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused by the value checks
        return np.ascontiguousarray(array, dtype=np.float32)


def _wanted_outputs(request: dict[str, Any], names: list[str]) -> list[tuple[str, bool]]:
    """(name, binary?) for each output to return, in request order (all outputs if none is named)."""
    default_binary = _flag(_parameters(request, "request"), "binary_data_output", False, "request")
    asked = request.get("outputs")
    if asked is None:
        return [(n, default_binary) for n in names]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise InvalidInput("outputs must be a list of objects")
    check_output_names([out.get("name") for out in asked], names)
    chosen: list[tuple[str, bool]] = []
    for out in asked:
        where = f"output {shown(out['name'])}"
        chosen.append((out["name"], _flag(_parameters(out, where), "binary_data", default_binary, where)))
    return chosen


@router.post(
    "/models/{model_name}/infer", summary="Inference (JSON or binary tensors)", responses=_INFER_ERRORS
)
@router.post(
    "/models/{model_name}/versions/{version}/infer", summary="Inference (versioned)", responses=_INFER_ERRORS
)
async def infer(request: Request, model_name: str, version: str | None = None) -> Response:
    async def read() -> _RestRequest:
        return _RestRequest(await request.body(), request.headers.get(HEADER_LENGTH))

    return _encode(await oip.infer(registry_of(request), settings_of(request), model_name, version, read))


class _RestRequest:
    """An infer body as the binary tensor extension lays it out: JSON, then the binary inputs."""

    def __init__(self, body: bytes, header_length: str | None):
        self.json, self.binary = _split_body(body, header_length)
        self.id = self.json.get("id")
        if self.id is not None and not isinstance(self.id, str):
            raise InvalidInput("id must be a string")
        self._tensor: dict[str, Any] = {}

    def wanted_outputs(self, names: list[str]) -> list[tuple[str, bool]]:
        return _wanted_outputs(self.json, names)

    def input_shape(self, want: dict[str, Any], settings: Settings, *, images: bool) -> list[int]:
        self._tensor, shape = _input_header(self.json, want, settings, images=images)
        return shape

    def input_array(self, shape: list[int]) -> np.ndarray:
        return _input_data(self._tensor, shape, self.binary)


def _encode(done: oip.Inference[_RestRequest]) -> Response:
    """The answer: JSON, followed by the outputs asked for as binary."""
    header: dict[str, Any] = {"model_name": done.ref.oip_name, "model_version": done.version, "outputs": []}
    if done.request.id is not None:
        header["id"] = done.request.id
    chunks: list[bytes] = []
    for name, as_binary in done.outputs:
        array = np.ascontiguousarray(done.results[name], dtype="<f4")
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if as_binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel()
        header["outputs"].append(entry)
    json_bytes = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"X-Model-Version": header["model_version"]}
    if not chunks:
        return Response(json_bytes, media_type="application/json", headers=headers)
    return Response(
        json_bytes + b"".join(chunks),
        media_type="application/octet-stream",
        headers={**headers, "Inference-Header-Content-Length": str(len(json_bytes))},
    )
