"""The VAE operations over HTTP. Each handler parses, calls the data plane, and renders; nothing more.

Content negotiation (`Accept`): JSON by default; `image/png` gives one PNG (a grid when there are several
images); `application/x-npy` gives one float32 array, chosen with `?output=` where a route returns several.

Versions: every request may pin a loaded version with `version` (a field of the JSON or multipart body, or a
query parameter where the route takes its options from the query) or as `model: "name@version"`; unpinned
requests get the newest loaded version. Every response names the version that answered, in the JSON body and
in the `X-Model-Version` header (also on PNG and npy responses).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from service.config import Settings
from service.errors import InvalidInput
from service.http.deadline import DeadlineRoute
from service.http.deps import image_pool_of, model_of, registry_of, settings_of, version_headers
from service.http.error_handlers import INFERENCE_ERRORS, responses
from service.http.paths import V1
from service.http.pixels import choose_pixels
from service.http.requests import JSON, MULTIPART, NPY, PNG, Payload, read_payload, validate
from service.http.responses import (
    NumpyJSONResponse,
    negotiate,
    novelty_fields,
    npy_response,
    pick_output,
    png_base64,
    png_picture,
    png_response,
)
from service.http.schemas import (
    MAX_VERSION,
    MODEL_REF_PATTERN,
    DecodeOptions,
    DecodeRequest,
    DecodeResponse,
    EncodeOptions,
    EncodeRequest,
    EncodeResponse,
    InterpolateOptions,
    InterpolateRequest,
    InterpolateResponse,
    ManifoldResponse,
    ReconstructOptions,
    ReconstructRequest,
    ReconstructResponse,
    SampleRequest,
    SampleResponse,
    VersionField,
    limit,
)
from service.inference import VAEModel, new_seed
from service.inference.limits import (
    as_latents,
    check_manifold_size,
    check_response_bytes,
    check_sample_n,
    check_steps,
    response_bytes,
)
from service.tracing import span

router = APIRouter(prefix=V1, tags=["inference"], route_class=DeadlineRoute)

_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _responses(model: type[BaseModel], *media: str) -> dict[int | str, dict[str, Any]]:
    ok: dict[str, Any] = {"model": model, "description": "Success", "content": {m: _BINARY for m in media}}
    return {200: ok, **responses(*INFERENCE_ERRORS)}


def _body(
    json_model: type[BaseModel], form_options: type[BaseModel] | None, npy: bool = False
) -> dict[str, Any]:
    """OpenAPI requestBody for handlers that parse their own body (see service.http.requests)."""
    content: dict[str, Any] = {JSON: {"schema": json_model.model_json_schema()}}
    if form_options is not None:
        files = {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Images."}
        props = {"files": files, **form_options.model_json_schema()["properties"]}
        content[MULTIPART] = {"schema": {"type": "object", "properties": props, "required": ["files"]}}
    if npy:
        content[NPY] = {"schema": {**_BINARY["schema"], "description": "float32 (N, D) .npy"}}
    return {"requestBody": {"required": True, "content": content}}


def _tag(model: VAEModel) -> dict[str, Any]:
    return {"model": model.name, "version": model.manifest.version}


def _no_latents(payload: Payload) -> None:
    if payload.latents is not None:
        raise InvalidInput("latents: not accepted here; send images")


async def _images_in(
    request: Request, payload: Payload, vae: VAEModel, exactly: int | None = None
) -> np.ndarray:
    """The request's images as the model's input tensor, checked and decoded on the bounded pool."""
    pool, settings = image_pool_of(request), settings_of(request)
    with span("vae.decode_images", {"vae.images": len(payload.images or [])}):
        return await pool.prepare(payload.images or [], vae.manifest.image, settings, exactly=exactly)


def _bound_response(settings: Settings, vae: VAEModel, images: int, floats: int) -> None:
    check_response_bytes(response_bytes(images=images, image_shape=vae.manifest.image.shape, floats=floats),
                         settings)  # fmt: skip


ModelQuery = Annotated[
    str | None,
    Query(pattern=MODEL_REF_PATTERN, description="Model name or `name@version` (default: the default)."),
]
VersionQuery = Annotated[
    int | None,
    Query(ge=1, le=MAX_VERSION, description=VersionField.description),
]
NpyOutput = Query(description="Which array an `Accept: application/x-npy` response holds.")
PIXELS_QUERY = "As the JSON body's field of the same name, for `application/x-npy` bodies."


@router.post(
    "/encode",
    summary="Images -> posterior mean and log-variance (and a seeded sample z)",
    description="With `Accept: application/x-npy` the response is one float32 array: the means, or the "
    "array named by `output`.",
    responses=_responses(EncodeResponse, NPY),
    openapi_extra=_body(EncodeRequest, EncodeOptions),
)
async def encode(
    request: Request,
    output: Annotated[Literal["mean", "log_var", "z"] | None, NpyOutput] = None,
) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    payload = await read_payload(request, settings)
    opts = validate(EncodeOptions, payload.fields)
    _no_latents(payload)
    model = model_of(registry, opts.model, opts.version)
    _bound_response(settings, model, 0, len(payload.images or []) * model.latent_dim * 3)
    x = await _images_in(request, payload, model)
    seed = (opts.seed if opts.seed is not None else new_seed()) if opts.sample else None
    enc = await model.encode(x, sample_seed=seed)
    headers = version_headers(model, {"X-Seed": str(seed)} if seed is not None else None)
    if negotiate(request, [NPY]) == NPY:
        arrays = {"mean": enc.mean, "log_var": enc.log_var, "z": enc.z}
        return npy_response(pick_output(output, arrays, "mean"), headers)
    body = {**_tag(model), "latent_dim": model.latent_dim, "mean": enc.mean, "log_var": enc.log_var}
    if enc.z is not None:
        body.update(z=enc.z, seed=enc.seed)
    return NumpyJSONResponse(body, headers=headers)


@router.post(
    "/decode",
    summary="Latents -> images",
    description="Latents as JSON or as an `application/x-npy` body (float32 (N, D); name the model with "
    "`?model=` and `?version=`). Images as base64 PNGs, one PNG grid (`Accept: image/png`) or float32 "
    "(N, C, H, W) npy.",
    responses=_responses(DecodeResponse, PNG, NPY),
    openapi_extra=_body(DecodeRequest, None, npy=True),
)
async def decode(
    request: Request,
    model: ModelQuery = None,
    version: VersionQuery = None,
    pixels: Annotated[Literal["sample", "mean"] | None, Query(description=PIXELS_QUERY)] = None,
    pixel_temperature: Annotated[float | None, Query(description=PIXELS_QUERY)] = None,
    seed: Annotated[int | None, Query(description=PIXELS_QUERY)] = None,
) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    payload = await read_payload(request, settings, accepts_npy=True)
    # An npy body has no fields: the pixel options may come in the query (the body's win over it).
    query = {"pixels": pixels, "pixel_temperature": pixel_temperature, "seed": seed}
    opts = validate(DecodeOptions, {**{k: v for k, v in query.items() if v is not None}, **payload.fields})
    if payload.images is not None:
        raise InvalidInput("images: not accepted here; send latents")
    if model and opts.model and model != opts.model:
        raise InvalidInput(f"model given twice: {model!r} in the query, {opts.model!r} in the body")
    if version is not None and opts.version is not None and version != opts.version:
        raise InvalidInput(f"version given twice: {version} in the query, {opts.version} in the body")
    vae = model_of(registry, opts.model or model, opts.version or version)
    chosen = choose_pixels(vae, opts, opts.seed)
    z = as_latents(payload.latents, settings, vae.latent_dim)
    _bound_response(settings, vae, len(z), 0)
    images = await vae.decode(z, chosen.draw)
    return await _images_out(
        request, vae, images, {"images": images}, extra=chosen.fields, headers=chosen.headers
    )


@router.post(
    "/sample",
    summary="Draw n latents from the prior (seeded) and decode them",
    description="The same seed, n, temperature, label and model always give the same images. With `label`, "
    "the draws come from that class's distribution, `conditional.kind` on /v1/models: its Gaussian, or the "
    "prior's components made from that class's training images (models that list `conditional.classes`); "
    "an unknown label is a 422 listing the valid ones. npy output: the images, or `?output=latents`.",
    responses=_responses(SampleResponse, PNG, NPY),
    openapi_extra=_body(SampleRequest, SampleRequest),
)
async def sample(
    request: Request,
    output: Annotated[Literal["images", "latents"] | None, NpyOutput] = None,
) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    payload = await read_payload(request, settings)
    if payload.images is not None or payload.latents is not None:
        raise InvalidInput("sample takes n, seed, temperature, label and model only")
    opts = validate(SampleRequest, payload.fields)
    check_sample_n(opts.n, settings)
    vae = model_of(registry, opts.model, opts.version)
    label = None if opts.label is None else str(opts.label)
    if label is not None:
        vae.class_index(label)  # an unknown label or a model without classes: 422 before any work
    _bound_response(settings, vae, opts.n, opts.n * vae.latent_dim)
    seed = opts.seed if opts.seed is not None else new_seed()
    pixels = choose_pixels(vae, opts, seed)  # the pixel draws are seeded by the same seed, a stream apart
    pixel_temperature = None if pixels.draw is None else pixels.draw.temperature
    images, latents = await vae.sample(opts.n, seed, opts.temperature, label, pixel_temperature)
    headers = {"X-Seed": str(seed), **pixels.headers}
    extra: dict[str, Any] = {
        "latents": latents, "seed": seed, "temperature": opts.temperature, **pixels.fields,
    }  # fmt: skip
    if label is not None:
        extra["label"] = label
    return await _images_out(
        request, vae, images, {"images": images, "latents": latents}, output, extra=extra, headers=headers
    )


@router.post(
    "/reconstruct",
    summary="Images -> reconstructions, the negative ELBO, and a novelty statistic with p-values",
    description="score = -log p(x | z = mean) summed over pixels (Bernoulli: binary cross-entropy; Gaussian: "
    "the manifest's sigma) + KL(q(z|x) || N(0, I)) in closed form (under a mixture prior, the upper bound "
    "-log sum_k w_k exp(-KL(q || p_k))); a single-point estimate at the posterior mean, so it is "
    "deterministic. The score is a likelihood, not a novelty score: images simpler than the training data "
    "score lower. `novelty` corrects for that (input complexity, or the score where the likelihood is not a "
    "code length; docs/novelty.md), and `p_values` are conformal p-values from the version's calibration "
    "file: flagging `p <= alpha` (`novel`) flags about a fraction alpha of in-distribution images. "
    "`mse` is the mean squared pixel error. npy output: `?output=`.",
    responses=_responses(ReconstructResponse, PNG, NPY),
    openapi_extra=_body(ReconstructRequest, ReconstructOptions),
)
async def reconstruct(
    request: Request,
    output: Annotated[
        Literal["images", "scores", "mse", "mean", "log_var", "novelty", "p_values"] | None, NpyOutput
    ] = None,
) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    payload = await read_payload(request, settings)
    opts = validate(ReconstructOptions, payload.fields)
    _no_latents(payload)
    vae = model_of(registry, opts.model, opts.version)
    pixels = choose_pixels(vae, opts, opts.seed)
    n = len(payload.images or [])
    _bound_response(settings, vae, n, n * (2 * vae.latent_dim + 9))
    x = await _images_in(request, payload, vae)
    rec = await vae.reconstruct(x, pixels.draw)
    report = vae.novelty(x, rec, opts.alpha if opts.alpha is not None else settings.novelty_alpha)
    extra = {"scores": rec.scores, "mse": rec.mse, "mean": rec.mean, "log_var": rec.log_var,
             **novelty_fields(report)}  # fmt: skip
    arrays = {"images": rec.images, **extra}
    return await _images_out(
        request, vae, rec.images, arrays, output, extra={**extra, **pixels.fields}, headers=pixels.headers
    )


@router.post(
    "/interpolate",
    summary="Path between two images (their encoder means) or two latents, decoded",
    description="`method`: lerp or slerp; the path's endpoints are exactly the inputs' latents. PNG output: "
    "one row of `steps` images. npy output: the images, or `?output=latents`.",
    responses=_responses(InterpolateResponse, PNG, NPY),
    openapi_extra=_body(InterpolateRequest, InterpolateOptions),
)
async def interpolate(
    request: Request,
    output: Annotated[Literal["images", "latents"] | None, NpyOutput] = None,
) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    payload = await read_payload(request, settings)
    opts = validate(InterpolateOptions, payload.fields)
    check_steps(opts.steps, settings)
    vae = model_of(registry, opts.model, opts.version)
    pixels = choose_pixels(vae, opts, opts.seed, shared=True)  # one draw along the path: no flicker
    if (payload.images is None) == (payload.latents is None):
        raise InvalidInput("give either two images or two latents")
    _bound_response(settings, vae, opts.steps, opts.steps * vae.latent_dim)
    if payload.images is not None:
        x = await _images_in(request, payload, vae, exactly=2)
        ends = (await vae.encode(x)).mean
    else:
        ends = as_latents(payload.latents, settings, vae.latent_dim, exactly=2)
    images, latents = await vae.interpolate(ends[0], ends[1], opts.steps, opts.method, pixels.draw)
    extra = {"method": opts.method, "latents": latents, **pixels.fields}
    arrays = {"images": images, "latents": latents}
    return await _images_out(
        request, vae, images, arrays, output, extra=extra, columns=opts.steps, headers=pixels.headers
    )


@router.get(
    "/manifold",
    summary="The decoded 2-D latent manifold grid of a 2-D model (Kingma and Welling, fig. 4)",
    description="Latents on a size x size grid of Gaussian quantiles (0.05 to 0.95). JSON: one base64 "
    "PNG and its latents; `Accept: image/png`: the PNG itself. 422 for models whose latent_dim is not 2.",
    responses=_responses(ManifoldResponse, PNG),
)
async def manifold(
    request: Request,
    model: ModelQuery = None,
    version: VersionQuery = None,
    size: Annotated[int, Query(ge=2, description=f"Grid edge; at most {limit('max_manifold_size')}.")] = 20,
) -> Response:
    settings, registry = settings_of(request), registry_of(request)
    check_manifold_size(size, settings)
    vae = model_of(registry, model, version)
    _bound_response(settings, vae, size * size, size * size * 2)
    images, latents = await vae.manifold(size)
    headers = version_headers(vae)
    if negotiate(request, [PNG]) == PNG:
        return await png_response(images, vae.manifest.image, columns=size, headers=headers)
    image = base64.b64encode(await png_picture(images, vae.manifest.image, columns=size)).decode("ascii")
    return NumpyJSONResponse({**_tag(vae), "size": size, "image": image, "latents": latents}, headers=headers)


async def _images_out(
    request: Request,
    vae: VAEModel,
    images: Any,
    arrays: dict[str, Any],
    output: str | None = None,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    columns: int | None = None,
) -> Response:
    """Render a result whose main part is images, in the media type the client asked for."""
    headers = version_headers(vae, headers)
    media = negotiate(request, [PNG, NPY])
    if media == PNG:
        return await png_response(images, vae.manifest.image, columns=columns, headers=headers)
    if media == NPY:
        return npy_response(pick_output(output, arrays, "images"), headers)
    body = {**_tag(vae), "images": await png_base64(images, vae.manifest.image), **(extra or {})}
    return NumpyJSONResponse(body, headers=headers)
