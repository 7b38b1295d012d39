"""What one request may ask for, written once for every protocol: counts, sizes, values and budgets.

Each protocol adapter (`/v1` and `/v2` over HTTP, and any other) parses its own wire format and then calls
these checks on plain values (ints, shapes, numpy arrays, image headers) with the `Settings`; each failed
check raises `InvalidInput` with a message a client can act on. The bounds themselves are `Settings` fields,
each with its default and reason (docs/limits.md lists them). Checks that need only a count or a header run
before anything is decoded, allocated or run, so a request's cost is known before the work starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import InvalidInput
from vae_contract.imaging import ImageHeader
from vae_contract.manifest import ImageSpec

log = logging.getLogger(__name__)

# Upper bounds on the bytes one value takes in a response. JSON: orjson writes a float32 in at most 15
# characters ("-1.1754944e-38") plus its comma. Images: a PNG (or its base64) of C*H*W 8-bit values is never
# larger than the float32 array of them, plus the file's fixed chunks.
JSON_BYTES_PER_FLOAT = 16
BINARY_BYTES_PER_FLOAT = 4
PNG_OVERHEAD_BYTES = 128
BODY_OVERHEAD_BYTES = 1024

# The settings that bound requests; docs/limits.md is generated from their descriptions.
REQUEST_LIMITS = (
    "max_body_bytes",
    "max_images_per_request",
    "max_image_pixels",
    "max_request_image_bytes",
    "image_decode_workers",
    "image_decode_queue",
    "max_latents_per_request",
    "max_latent_abs",
    "max_sample_n",
    "max_interpolate_steps",
    "max_manifold_size",
    "max_response_bytes",
    "request_timeout_s",
)


# --- counts ---------------------------------------------------------------------------------------------


def check_image_count(n: int, settings: Settings, exactly: int | None = None) -> None:
    if n == 0:
        raise InvalidInput("images: at least one image is required (JSON 'images' or multipart 'files')")
    if exactly is not None and n != exactly:
        raise InvalidInput(f"images: expected exactly {exactly} images, got {n}")
    if n > settings.max_images_per_request:
        raise InvalidInput(f"images: {n} images; at most {settings.max_images_per_request} allowed")


def check_sample_n(n: int, settings: Settings) -> None:
    if n > settings.max_sample_n:
        raise InvalidInput(f"n: at most {settings.max_sample_n}")


def check_steps(steps: int, settings: Settings) -> None:
    if steps > settings.max_interpolate_steps:
        raise InvalidInput(f"steps: at most {settings.max_interpolate_steps}")


def check_manifold_size(size: int, settings: Settings) -> None:
    if size > settings.max_manifold_size:
        raise InvalidInput(f"size: at most {settings.max_manifold_size}")


def check_batch(n: int, settings: Settings, *, images: bool) -> None:
    """A tensor's batch size: the image or the latent limit, whichever the graph takes."""
    limit = settings.max_images_per_request if images else settings.max_latents_per_request
    if n < 1:
        raise InvalidInput(f"batch size must be at least 1, got {n}")
    if n > limit:
        raise InvalidInput(f"batch of {n} exceeds the limit of {limit} per request")


def check_tensor(
    name: object, datatype: object, shape: Sequence[int], want: Mapping[str, Any], settings: Settings, *,
    images: bool,
) -> None:  # fmt: skip
    """An Open Inference Protocol input's declaration (any transport) against the graph's signature
    (`want`: name and shape, batch first) and the batch limit, before its data is read."""
    if name != want["name"]:
        raise InvalidInput(f"unexpected input {str(name)[:64]!r}; this model takes {want['name']!r}")
    if datatype != "FP32":
        raise InvalidInput(f"input {name!r} must have datatype FP32, not {str(datatype)[:32]!r}")
    fixed = list(want["shape"][1:])
    if len(shape) != len(want["shape"]) or list(shape[1:]) != fixed:
        raise InvalidInput(
            f"input {name!r} has shape {list(shape[:8])}; expected [batch, {', '.join(map(str, fixed))}]"
        )
    check_batch(shape[0], settings, images=images)


def check_output_names(asked: Sequence[object], names: Sequence[str]) -> None:
    """Requested outputs exist and each is named once (a repeated name would repeat the whole output)."""
    seen: set[str] = set()
    for name in asked:
        if not isinstance(name, str) or name not in names:
            raise InvalidInput(f"unknown output {str(name)[:64]!r}; this model has {list(names)}")
        if name in seen:
            raise InvalidInput(f"output {name!r} is requested more than once")
        seen.add(name)


# --- latents --------------------------------------------------------------------------------------------


def check_latent_shape(
    shape: Sequence[int], settings: Settings, latent_dim: int | None, *, name: str = "latents",
    exactly: int | None = None,
) -> None:  # fmt: skip
    """(N, D) with 1 <= N <= max_latents_per_request and D == latent_dim (when known)."""
    if len(shape) != 2:
        raise InvalidInput(f"{name}: expected a list of vectors (2-D), got shape {tuple(shape)}")
    n, dim = shape
    if exactly is not None and n != exactly:
        raise InvalidInput(f"{name}: expected exactly {exactly} vectors, got {n}")
    if n < 1 or n > settings.max_latents_per_request:
        raise InvalidInput(f"{name}: {n} vectors; allowed 1 to {settings.max_latents_per_request}")
    if latent_dim is not None and dim != latent_dim:
        raise InvalidInput(f"{name}: vectors have length {dim}; the model's latent_dim is {latent_dim}")


def check_latent_values(arr: np.ndarray, settings: Settings, *, name: str = "latents") -> None:
    """Finite and |v| <= max_latent_abs: the prior is N(0, I), far values only make the decoder overflow."""
    wide = arr.astype(np.float64, copy=False)
    if not np.isfinite(wide).all():
        raise InvalidInput(f"{name}: NaN or Inf values")
    if arr.size and np.abs(wide).max() > settings.max_latent_abs:
        raise InvalidInput(f"{name}: values must satisfy |v| <= {settings.max_latent_abs:g}")


def as_latents(
    value: Any, settings: Settings, latent_dim: int, *, name: str = "latents", exactly: int | None = None
) -> np.ndarray:
    """A JSON nested list or a numeric array -> float32 (N, latent_dim), or InvalidInput saying why not."""
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
    check_numeric(arr, name)
    check_latent_shape(arr.shape, settings, latent_dim, name=name, exactly=exactly)
    check_latent_values(arr, settings, name=name)
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_numeric(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind not in "iuf":
        kinds = {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or nested values"}
        raise InvalidInput(f"{name}: expected numbers, got {kinds.get(arr.dtype.kind, str(arr.dtype))}")


# --- images ---------------------------------------------------------------------------------------------


def check_pixel_values(arr: np.ndarray, spec: ImageSpec, *, name: str = "x") -> None:
    """Model-ready pixels (for protocols that send tensors): finite and within the model's pixel range."""
    if not np.isfinite(arr).all():
        raise InvalidInput(f"input {name!r} contains NaN or Inf")
    low, high = spec.pixel_range
    if arr.size and (arr.min() < low or arr.max() > high):
        raise InvalidInput(f"input {name!r} values must lie in the model's pixel range [{low:g}, {high:g}]")


def check_image_headers(headers: Iterable[ImageHeader], spec: ImageSpec, settings: Settings) -> None:
    """Per image: width*height <= max_image_pixels. Per request: the decoded bytes of every image (as Pillow
    holds them: the mode's bytes per pixel) plus the model tensor they become fit max_request_image_bytes.
    Runs on headers only, before any image is decoded."""
    total, count = 0, 0
    for i, head in enumerate(headers):
        pixels = head.width * head.height
        if pixels > settings.max_image_pixels:
            raise InvalidInput(
                f"images[{i}]: image too large: {head.width}x{head.height} exceeds "
                f"{settings.max_image_pixels} pixels"
            )
        total += pixels * head.bytes_per_pixel
        count += 1
    total += count * int(np.prod(spec.shape)) * 4
    if total > settings.max_request_image_bytes:
        raise InvalidInput(
            f"images: decoding them would take {total} bytes; the budget per request is "
            f"{settings.max_request_image_bytes} (VAE_MAX_REQUEST_IMAGE_BYTES)"
        )


# --- outputs --------------------------------------------------------------------------------------------


def check_finite_outputs(graph: str, *outputs: np.ndarray) -> None:
    """A graph's outputs are finite: inputs inside the limits can still overflow a layer to inf or NaN, and
    such a result must be an error, not numbers a client takes for an answer."""
    for out in outputs:
        # The sum is one pass without a temporary; only a non-finite sum needs the element-wise check.
        if not np.isfinite(out.sum()) and not np.isfinite(out).all():
            log.warning("%s produced NaN or Inf for a request's inputs; answered as invalid input", graph)
            raise InvalidInput(
                f"the {graph} produced NaN or Inf for these inputs (they are out of its range)"
            )


def response_bytes(
    *, images: int = 0, image_shape: Sequence[int] = (), floats: int = 0, binary: bool = False
) -> int:
    """An upper bound on a response's size: `images` images of `image_shape` (as PNG, base64 PNG or float32
    arrays) and `floats` numbers (as JSON or, with `binary`, raw float32)."""
    per_image = int(np.prod(image_shape, dtype=np.int64)) * BINARY_BYTES_PER_FLOAT + PNG_OVERHEAD_BYTES
    per_float = BINARY_BYTES_PER_FLOAT if binary else JSON_BYTES_PER_FLOAT
    return BODY_OVERHEAD_BYTES + images * per_image + floats * per_float


def check_response_bytes(estimate: int, settings: Settings) -> None:
    """Refuse, before any work, a request whose answer could exceed max_response_bytes."""
    if estimate > settings.max_response_bytes:
        raise InvalidInput(
            f"the response would take up to {estimate} bytes; at most {settings.max_response_bytes} "
            "(VAE_MAX_RESPONSE_BYTES): ask for fewer items or outputs"
        )
