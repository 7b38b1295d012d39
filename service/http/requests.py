"""HTTP request bodies -> plain values: JSON, multipart and `.npy` bodies, split into options and bulk data.

Fast paths: JSON is parsed by orjson and float arrays go straight to numpy; a `.npy` body is checked from its
header (dtype, shape against the limits, byte count) before any array exists, then viewed in place. The
limits themselves live in `service.inference.limits`, shared with every protocol.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.config import Settings
from service.errors import InvalidInput, UnsupportedMediaType
from service.inference.limits import check_latent_shape, check_numeric

JSON = "application/json"
NPY = "application/x-npy"
PNG = "image/png"
MULTIPART = "multipart/form-data"

_MAX_FORM_FIELDS = 16
_MAX_NPY_HEADER = 4096  # numpy writes ~128 bytes for a 2-D float array

OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass
class Payload:
    """A request body split into scalar fields (for pydantic) and bulk fields (for numpy)."""

    fields: dict[str, Any] = field(default_factory=dict)
    images: list[bytes] | None = None
    latents: Any = None  # JSON value or ndarray, checked by limits.as_latents


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_payload(request: Request, settings: Settings, *, accepts_npy: bool = False) -> Payload:
    """Parse a JSON, multipart or (where allowed) npy body; an empty body counts as `{}`."""
    ctype = content_type(request)
    if ctype == MULTIPART:
        return await _read_multipart(request, settings)
    body = await request.body()
    if ctype == NPY and accepts_npy:
        return Payload(latents=load_npy(body, settings))
    if ctype == JSON or ctype.endswith("+json") or (not ctype and body.strip()):
        return _split_json(load_json(body))
    if not body:
        return Payload()
    allowed = f"{JSON}, {MULTIPART}" + (f" or {NPY}" if accepts_npy else "")
    raise UnsupportedMediaType(f"unsupported Content-Type {ctype!r}; send {allowed}")


def load_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the JSON body must be an object")
    return data


def _split_json(data: dict[str, Any]) -> Payload:
    payload = Payload(latents=data.pop("latents", None))
    images = data.pop("images", None)
    if images is not None:
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise InvalidInput("images: expected a list of base64 strings")
        payload.images = [decode_base64_image(s, i) for i, s in enumerate(images)]
    payload.fields = data
    return payload


def decode_base64_image(text: str, index: int) -> bytes:
    """One image sent as base64 or a base64 data URL (strict: junk characters are an error), for any route."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidInput(f"images[{index}]: data URLs must be base64 encoded")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"images[{index}]: invalid base64") from None


async def _read_multipart(request: Request, settings: Settings) -> Payload:
    try:
        form = await request.form(
            max_files=settings.max_images_per_request, max_fields=_MAX_FORM_FIELDS, max_part_size=64 * 1024
        )
    except HTTPException as exc:  # python-multipart limits and malformed bodies surface as 400s
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from None
    try:
        payload = Payload()
        files: list[bytes] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "files":
                    raise InvalidInput(f"unexpected file field {key!r}; upload images as 'files'")
                files.append(await value.read())
            elif key == "latents":
                payload.latents = load_json(b'{"l": ' + value.encode() + b"}")["l"]
            elif key in payload.fields:
                raise InvalidInput(f"field {key!r} given twice")
            else:
                payload.fields[key] = value
        payload.images = files or None
        return payload
    finally:
        await form.close()


def load_npy(body: bytes, settings: Settings, latent_dim: int | None = None) -> np.ndarray:
    """A `.npy` body of latents, refused from its header (before any allocation) when its dtype, shape or
    byte count is wrong; the array returned is a read-only view of the body."""
    fp = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_NPY_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_NPY_HEADER)
        else:
            raise InvalidInput(f"invalid .npy body (format version {version} is not supported)")
    except InvalidInput:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise InvalidInput(f"invalid .npy body ({str(exc)[:200]})") from None
    check_numeric(np.empty(0, dtype=dtype), "latents (.npy body)")
    check_latent_shape(shape, settings, latent_dim, name="latents (.npy body)")
    count = int(np.prod(shape, dtype=object))
    offset = fp.tell()
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidInput(
            f"invalid .npy body: shape {shape} of {dtype.str} needs {count * dtype.itemsize} bytes of data, "
            f"the body has {len(body) - offset}"
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def validate(model: type[OptionsT], fields: dict[str, Any]) -> OptionsT:
    """Scalar options through pydantic; errors become the standard 422 body via RequestValidationError."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
