"""`POST /v1/embeddings` in the shape of OpenAI's embeddings API, so the official `openai` client works as is.

What an embedding is here: the posterior mean E[z | x] of the encoder for each image, float32, **not**
normalised (its length means something: the prior is N(0, I) and the vector can be decoded by /v1/decode as
it is). Normalise it yourself for cosine similarity.

`input` is one image or a list of images, each a base64 string or a `data:image/...;base64,` URL (the same
decoding, pixel and count limits as /v1/encode). `encoding_format`: `float` (JSON numbers) or `base64` (the
little-endian float32 bytes of each vector, what OpenAI sends; the `openai` client asks for it by default).
`usage` counts images: each input is one "token".

`dimensions=k` keeps the k latent dimensions that carry the most information, most informative first. A
VAE's dimensions are not ordered by training (unlike PCA or Matryoshka embeddings), so the order is measured
once per model version, deterministically: the mean KL(q(z_i | x) || N(0, 1)) of each dimension over a fixed
reference set the model makes itself (REFERENCE_N images decoded from prior draws with seed REFERENCE_SEED,
then encoded), highest first, KLs rounded to 1e-3 nats with ties broken by index. Collapsed ("inactive")
dimensions have KL near 0 and come last. No data set is needed at serving time, and the same model version
always gives the same order. The kept indices are sent in the `X-Embedding-Dimensions` header.

`model` names a model (omitted: the default model) and may pin its version: `mnist` (the newest loaded) or
`mnist@1` (or `version: 1`, as on every /v1 route). A version that is not loaded is a 404 naming the loaded
ones. The response's `model` is always `name@version`, the version that answered (also in `X-Model-Version`).

An embedding of an image unlike the model's data is still a vector. To keep such images out of an index, send
the same images to /v1/reconstruct with the same `model` and keep those whose `novel` is false (a conformal
p-value above `alpha`; docs/novelty.md): the novelty test, and its false-positive rate, live in one place.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    UnsupportedMediaType,
)
from service.http.deadline import DeadlineRoute
from service.http.deps import image_pool_of, model_of, registry_of, settings_of, version_headers
from service.http.error_handlers import responses
from service.http.requests import JSON, decode_base64_image, read_payload, validate
from service.http.responses import NumpyJSONResponse
from service.inference import VAEModel
from service.inference.limits import check_image_count, check_response_bytes, response_bytes
from service.inference.model import draw_prior
from service.tracing import span

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=DeadlineRoute)

# The reference set that orders the dimensions for `dimensions`; changing either changes what a shortened
# embedding means, so they are part of the API.
REFERENCE_N = 256
REFERENCE_SEED = 0
KL_DECIMALS = 3


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="Model name, optionally pinned to a version: `mnist` or `mnist@1`; omitted (OpenAI "
        "requires it, we do not): the default model.",
        examples=["mnist", "mnist@1"],
    )
    input: str | list[str] = Field(
        ...,
        description="One image or a list of images: PNG or JPEG as base64 strings or data URLs. At most "
        "VAE_MAX_IMAGES_PER_REQUEST (256).",
    )
    version: int | None = Field(
        None, ge=1, description="Pin a loaded version (as `model: name@version` does); omitted: the newest."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: JSON numbers; `base64`: little-endian float32 bytes of each vector."
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        description="Keep this many dimensions, most informative (highest mean KL) first; at most "
        "latent_dim.",
    )
    user: str | None = Field(None, max_length=256, description="Accepted for compatibility; unused.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Images embedded (one token each).")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="`name@version` of the model that answered.")
    usage: EmbeddingsUsage


_ERRORS = (
    InvalidInput, ModelNotFound, PayloadTooLarge, UnsupportedMediaType, Unauthorized, NotReady, Overloaded,
    Timeout, InferenceFailed,
)  # fmt: skip


# Per loaded model version, computed on first use; a retired version's entry goes with it.
_ORDERS: weakref.WeakKeyDictionary[VAEModel, np.ndarray] = weakref.WeakKeyDictionary()
_ORDER_LOCKS: weakref.WeakKeyDictionary[VAEModel, asyncio.Lock] = weakref.WeakKeyDictionary()


def order_by_kl(mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """Dimension indices by descending mean KL(N(mean_i, exp(log_var_i)) || N(0, 1)) over the rows.

    Per dimension the closed-form KL is (mean^2 + exp(log_var) - 1 - log_var) / 2. Rounded to KL_DECIMALS so
    float noise between execution providers cannot swap two dimensions that carry the same information; ties
    go to the lower index.
    """
    m, lv = mean.astype(np.float64), log_var.astype(np.float64)
    kl = 0.5 * (m**2 + np.exp(lv) - 1.0 - lv).mean(axis=0)  # (D,)
    rounded = np.round(kl, KL_DECIMALS)
    return np.lexsort((np.arange(len(kl)), -rounded)).astype(np.int64)


async def dimension_order(model: VAEModel) -> np.ndarray:
    """The model version's dimensions, most informative first (see the module docstring)."""
    order = _ORDERS.get(model)
    if order is not None:
        return order
    lock = _ORDER_LOCKS.setdefault(model, asyncio.Lock())
    async with lock:
        order = _ORDERS.get(model)
        if order is None:
            z = draw_prior(REFERENCE_N, model.latent_dim, REFERENCE_SEED)
            reference = await model.decode(z)
            encoding = await model.encode(reference)
            order = order_by_kl(encoding.mean, encoding.log_var)
            _ORDERS[model] = order
    return order


def _encoded(vector: np.ndarray, encoding_format: str) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


@router.post(
    "/embeddings",
    summary="Images -> latent embeddings (posterior means) in OpenAI's embeddings shape",
    description=(__doc__ or "").split("\n\n", 1)[1],
    response_model=EmbeddingsResponse,
    responses=responses(*_ERRORS),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": EmbeddingsRequest.model_json_schema()}},
        }
    },
)
async def create_embeddings(request: Request) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    payload = await read_payload(request, settings)
    if payload.images is not None or payload.latents is not None:
        raise InvalidInput("send images as 'input' (OpenAI's embeddings shape), not 'images' or 'latents'")
    opts = validate(EmbeddingsRequest, payload.fields)
    model = model_of(registry, opts.model, opts.version)
    if opts.dimensions is not None and opts.dimensions > model.latent_dim:
        raise InvalidInput(f"dimensions: at most the model's latent_dim, {model.latent_dim}")
    items = [opts.input] if isinstance(opts.input, str) else opts.input
    if not items:
        raise InvalidInput("input: at least one image is required")
    check_image_count(len(items), settings)  # before any base64 is decoded
    check_response_bytes(response_bytes(floats=len(items) * model.latent_dim), settings)
    try:
        blobs = [decode_base64_image(text, i) for i, text in enumerate(items)]
        with span("vae.decode_images", {"vae.images": len(blobs)}):
            x = await image_pool_of(request).prepare(blobs, model.manifest.image, settings)  # (N, C, H, W)
    except InvalidInput as exc:  # the shared checks name the field `images`; here it is `input`
        if not exc.message.startswith("images"):
            raise
        raise InvalidInput("input" + exc.message.removeprefix("images")) from None
    vectors = (await model.encode(x)).mean  # (N, D)
    headers = version_headers(model)
    if opts.dimensions is not None:
        kept = (await dimension_order(model))[: opts.dimensions]
        vectors = np.ascontiguousarray(vectors[:, kept])
        headers["X-Embedding-Dimensions"] = ",".join(map(str, kept.tolist()))
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(vec, opts.encoding_format)}
        for i, vec in enumerate(vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": f"{model.name}@{model.manifest.version}",
        "usage": {"prompt_tokens": len(data), "total_tokens": len(data)},
    }
    return NumpyJSONResponse(body, headers=headers)
