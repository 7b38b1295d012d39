"""Old names of `service.routes.requests`, `.responses` and the image checks, for routes not yet moved over.

New code calls `service.routes.requests` (reading), `service.routes.responses` (writing) and
`service.inference.limits` / `service.inference.images` (limits and image decoding) directly.
"""

from __future__ import annotations

import numpy as np

from service.config import Settings
from service.errors import InvalidInput
from service.inference.images import ImagePool
from service.inference.limits import as_latents as parse_latents
from service.inference.limits import check_image_count as _check_count
from service.manifest import ImageSpec
from service.routes.requests import JSON, MULTIPART, NPY, PNG, Payload, _b64decode, read_payload, validate
from service.routes.responses import (
    NumpyJSONResponse,
    negotiate,
    npy_bytes,
    npy_response,
    pick_output,
    png_base64,
    png_picture,
    png_response,
)

__all__ = [
    "JSON", "MULTIPART", "NPY", "PNG", "NumpyJSONResponse", "Payload", "_b64decode", "check_image_count",
    "negotiate", "npy_bytes", "npy_response", "parse_latents", "pick_output", "png_base64", "png_picture",
    "png_response", "prepare_images", "read_payload", "validate",
]  # fmt: skip

_POOL: ImagePool | None = None


def check_image_count(
    images: list[bytes] | None, settings: Settings, exactly: int | None = None
) -> list[bytes]:
    _check_count(len(images or []), settings, exactly)
    if not images:
        raise InvalidInput("images: at least one image is required")
    return images


async def prepare_images(blobs: list[bytes], spec: ImageSpec, max_pixels: int) -> np.ndarray:
    """Decode on a shared pool with the default limits (routes with a request use `image_pool_of`)."""
    global _POOL
    settings = Settings.model_construct()
    settings.max_image_pixels = max_pixels
    if _POOL is None:
        _POOL = ImagePool.from_settings(settings)
    return await _POOL.prepare(blobs, spec, settings)
