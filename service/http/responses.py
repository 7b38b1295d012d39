"""Numpy results -> HTTP responses: content negotiation, JSON from numpy, `.npy` bodies, PNGs and grids.

Responses are serialized from numpy by orjson; latents travel as `.npy` bytes when asked. PNG encoding of
many pixels runs in a worker thread so one large answer never stalls the event loop.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.errors import InvalidInput, shown
from service.http.requests import JSON, NPY, PNG
from service.inference.offload import off_loop
from service.tracing import span
from vae_contract.imaging import encode_png, make_grid
from vae_contract.manifest import ImageSpec
from vae_contract.novelty import NoveltyReport


class NumpyJSONResponse(Response):
    """JSON from dicts holding numpy arrays and scalars, serialized natively by orjson."""

    media_type = JSON

    def render(self, content: Any) -> bytes:
        with span("vae.encode_json"):
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


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
    with span("vae.encode_png", {"vae.images": len(images)}):
        data: bytes = await off_loop(picture.size, encode_png, picture, spec.pixel_range)
    return data


async def png_response(
    images: np.ndarray, spec: ImageSpec, *, columns: int | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(await png_picture(images, spec, columns=columns), media_type=PNG, headers=headers)


async def png_base64(images: np.ndarray, spec: ImageSpec) -> list[str]:
    with span("vae.encode_png", {"vae.images": len(images)}):
        return await off_loop(images.size, _png_base64, images, spec.pixel_range)


def _png_base64(images: np.ndarray, pixel_range: tuple[float, float]) -> list[str]:
    return [base64.b64encode(encode_png(img, pixel_range)).decode("ascii") for img in images]


def pick_output(name: str | None, arrays: dict[str, np.ndarray | None], default: str) -> np.ndarray:
    """The array an `?output=` query names, for npy responses."""
    chosen = name or default
    if chosen not in arrays:
        raise InvalidInput(f"output must be one of {sorted(arrays)}, got {shown(chosen)}")
    arr = arrays[chosen]
    if arr is None:
        raise InvalidInput(f"output {shown(chosen)} is not part of this response (see the request's options)")
    return arr


def novelty_fields(report: NoveltyReport) -> dict[str, Any]:
    """Reconstruct's novelty fields (ReconstructResponse documents them), per image where they are lists."""
    terms = report.terms
    return {
        "novelty": terms.novelty,
        "novelty_statistic": report.statistic,
        "p_values": report.p_values,
        "novel": report.novel,
        "alpha": report.alpha,
        "calibration_images": report.calibration_count,
        "p_values_reason": report.reason,
        "kl": terms.kl,
        "bits_per_dim": terms.bits_per_dim,
        "codec_bits_per_dim": terms.codec_bits_per_dim,
        "complexity": terms.complexity,
    }
