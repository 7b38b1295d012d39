"""HTTP bodies <-> numpy: request parsing and validation, content negotiation, response rendering.

Fast paths: JSON is parsed by orjson and float arrays go straight to numpy (checked for shape, finiteness and
magnitude as whole arrays, not element by element); responses are serialized from numpy by orjson; latents
travel as `.npy` bytes when asked. Image decoding and PNG encoding of many pixels run in a worker thread so
one large upload never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.config import Settings
from service.errors import InvalidInput, UnsupportedMediaType
from service.imaging import ImageDecodeError, decode_image, encode_png, make_grid, prepare_image
from service.manifest import ImageSpec

JSON = "application/json"
NPY = "application/x-npy"
PNG = "image/png"
MULTIPART = "multipart/form-data"

# Above this many pixels, PNG/image work moves off the event loop (a thread hop costs ~50 us; encoding a
# 28x28 PNG costs about as much, so small outputs stay inline).
_INLINE_PIXELS = 64 * 1024
_MAX_FORM_FIELDS = 16

OptionsT = TypeVar("OptionsT", bound=BaseModel)


class NumpyJSONResponse(Response):
    """JSON from dicts holding numpy arrays and scalars, serialized natively by orjson."""

    media_type = JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class Payload:
    """A request body split into scalar fields (for pydantic) and bulk fields (for numpy)."""

    fields: dict[str, Any] = field(default_factory=dict)
    images: list[bytes] | None = None
    latents: Any = None  # JSON value or ndarray, checked by parse_latents


# --- requests ----------------------------------------------------------------------------------------------


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_payload(request: Request, settings: Settings, *, accepts_npy: bool = False) -> Payload:
    """Parse a JSON, multipart or (where allowed) npy body; an empty body counts as `{}`."""
    ctype = _content_type(request)
    if ctype == MULTIPART:
        return await _read_multipart(request, settings)
    body = await request.body()
    if ctype == NPY and accepts_npy:
        return Payload(latents=_load_npy(body))
    if ctype == JSON or ctype.endswith("+json") or (not ctype and body.strip()):
        return _split_json(_load_json(body))
    if not body:
        return Payload()
    allowed = f"{JSON}, {MULTIPART}" + (f" or {NPY}" if accepts_npy else "")
    raise UnsupportedMediaType(f"unsupported Content-Type {ctype!r}; send {allowed}")


def _load_json(body: bytes) -> dict[str, Any]:
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
        payload.images = [_b64decode(s, i) for i, s in enumerate(images)]
    payload.fields = data
    return payload


def _b64decode(text: str, index: int) -> bytes:
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
                payload.latents = _load_json(b'{"l": ' + value.encode() + b"}")["l"]
            elif key in payload.fields:
                raise InvalidInput(f"field {key!r} given twice")
            else:
                payload.fields[key] = value
        payload.images = files or None
        return payload
    finally:
        await form.close()


def _load_npy(body: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"invalid .npy body ({exc})") from None


def validate(model: type[OptionsT], fields: dict[str, Any]) -> OptionsT:
    """Scalar options through pydantic; errors become the standard 422 body via RequestValidationError."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def parse_latents(
    value: Any, settings: Settings, latent_dim: int, *, name: str = "latents", exactly: int | None = None
) -> np.ndarray:
    """A JSON nested list or an npy array -> float32 (N, latent_dim), or InvalidInput saying what is wrong."""
    if value is None:
        raise InvalidInput(f"{name}: required")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        if not isinstance(value, list):
            raise InvalidInput(f"{name}: expected a list of latent vectors")
        try:
            arr = np.asarray(value)  # no dtype: strings and nested junk must not be coerced to numbers
        except (ValueError, TypeError):
            raise InvalidInput(f"{name}: vectors must all have the same length") from None
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{name}: expected numbers, got {_kind(arr)}")
    if arr.ndim != 2:
        raise InvalidInput(f"{name}: expected a list of vectors (2-D), got shape {arr.shape}")
    n, dim = arr.shape
    if exactly is not None and n != exactly:
        raise InvalidInput(f"{name}: expected exactly {exactly} vectors, got {n}")
    if n < 1 or n > settings.max_latents_per_request:
        raise InvalidInput(f"{name}: {n} vectors; allowed 1 to {settings.max_latents_per_request}")
    if dim != latent_dim:
        raise InvalidInput(f"{name}: vectors have length {dim}; the model's latent_dim is {latent_dim}")
    wide = arr.astype(np.float64, copy=False)
    if not np.isfinite(wide).all():
        raise InvalidInput(f"{name}: NaN or Inf values")
    if np.abs(wide).max() > settings.max_latent_abs:
        raise InvalidInput(f"{name}: values must satisfy |v| <= {settings.max_latent_abs:g}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _kind(arr: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or nested values"}.get(
        arr.dtype.kind, str(arr.dtype)
    )


def check_image_count(
    images: list[bytes] | None, settings: Settings, exactly: int | None = None
) -> list[bytes]:
    if not images:
        raise InvalidInput("images: at least one image is required (JSON 'images' or multipart 'files')")
    if exactly is not None and len(images) != exactly:
        raise InvalidInput(f"images: expected exactly {exactly} images, got {len(images)}")
    if len(images) > settings.max_images_per_request:
        raise InvalidInput(f"images: {len(images)} images; at most {settings.max_images_per_request} allowed")
    return images


async def prepare_images(blobs: list[bytes], spec: ImageSpec, max_pixels: int) -> np.ndarray:
    """Image bytes -> float32 (N, C, H, W), decoded and converted off the event loop."""
    return await asyncio.to_thread(_prepare_images, blobs, spec, max_pixels)


def _prepare_images(blobs: list[bytes], spec: ImageSpec, max_pixels: int) -> np.ndarray:
    out = np.empty((len(blobs), *spec.shape), dtype=np.float32)
    for i, data in enumerate(blobs):
        try:
            out[i] = prepare_image(decode_image(data, max_pixels), spec)
        except ImageDecodeError as exc:
            raise InvalidInput(f"images[{i}]: {exc}") from None
    return out


# --- responses ---------------------------------------------------------------------------------------------


def negotiate(request: Request, offered: Sequence[str]) -> str:
    """The media type to answer with: the client's most preferred of `offered`, JSON when none matches."""
    accept = request.headers.get("accept")
    if not accept:
        return JSON
    choices = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality > 0:
            choices.append((-quality, position, media.lower()))
    for _, _, media in sorted(choices):
        if media == JSON or media in ("*/*", "application/*"):
            return JSON
        if media in offered:
            return media
    return JSON


def npy_bytes(arr: np.ndarray) -> memoryview:
    """The .npy file of a float32 array, written with one copy of the data (np.save through BytesIO makes
    two, which shows at 256 decoded images per request)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
    header = head.getvalue()
    out = bytearray(len(header) + arr.nbytes)
    out[: len(header)] = header
    np.frombuffer(out, dtype=np.uint8, offset=len(header))[:] = arr.reshape(-1).view(np.uint8)
    return memoryview(out)


def npy_response(arr: np.ndarray, headers: dict[str, str] | None = None) -> Response:
    return Response(npy_bytes(arr), media_type=NPY, headers=headers)


async def png_picture(images: np.ndarray, spec: ImageSpec, *, columns: int | None = None) -> bytes:
    """One image as PNG bytes, several as one grid."""
    picture = images[0] if len(images) == 1 else make_grid(images, columns=columns)
    data: bytes = await _maybe_offload(picture.size, encode_png, picture, spec.pixel_range)
    return data


async def png_response(
    images: np.ndarray, spec: ImageSpec, *, columns: int | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(await png_picture(images, spec, columns=columns), media_type=PNG, headers=headers)


async def png_base64(images: np.ndarray, spec: ImageSpec) -> list[str]:
    return await _maybe_offload(images.size, _png_base64, images, spec.pixel_range)


def _png_base64(images: np.ndarray, pixel_range: tuple[float, float]) -> list[str]:
    return [base64.b64encode(encode_png(img, pixel_range)).decode("ascii") for img in images]


async def _maybe_offload(pixels: int, fn: Any, *args: Any) -> Any:
    if pixels <= _INLINE_PIXELS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def pick_output(name: str | None, arrays: dict[str, np.ndarray | None], default: str) -> np.ndarray:
    """The array an `?output=` query names, for npy responses."""
    chosen = name or default
    if chosen not in arrays:
        raise InvalidInput(f"output must be one of {sorted(arrays)}, got {chosen!r}")
    arr = arrays[chosen]
    if arr is None:
        raise InvalidInput(f"output {chosen!r} is not part of this response (see the request's options)")
    return arr
