"""Request and response schemas, named by role.

`*Options` hold a request's small scalar fields and are validated by pydantic at run time. The `*Request`
classes add the bulk fields (`images`, `latents`) for the OpenAPI document only: those arrays are parsed with
orjson and numpy and checked by `service.inference.limits` (shape, finiteness, magnitude), never element by
element. Response classes likewise document bodies that are serialized straight from numpy by orjson.
Limits in descriptions are read from `Settings` (their defaults); the running values come from `VAE_*`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.config import Settings
from vae_contract.manifest import MAX_VERSION, NAME_PATTERN, VERSION_DIGITS
from vae_contract.pixel_draws import DEFAULT_PIXEL_TEMPERATURE, MAX_PIXEL_TEMPERATURE

MAX_SEED = 2**63 - 1
# `name` or `name@version`: a model name, optionally pinned to one of its loaded versions.
MODEL_REF_PATTERN = NAME_PATTERN.removesuffix("$") + rf"(?:@{VERSION_DIGITS})?$"


def limit(name: str) -> str:
    """'VAE_NAME (default)' for a Settings field, so descriptions never restate a default by hand."""
    return f"VAE_{name.upper()} ({Settings.model_fields[name].default:g})"


ModelField = Field(
    None,
    pattern=MODEL_REF_PATTERN,
    description="Model name (see /v1/models), optionally pinned to a version as `name@version`; omitted: the "
    "default model.",
    examples=["mnist", "mnist@2"],
)
VersionField = Field(
    None,
    ge=1,
    le=MAX_VERSION,
    description="Pin this loaded version of the model (the response says which answered, also in the "
    "`X-Model-Version` header); omitted: the newest loaded version. Not loaded: 404 naming the loaded ones.",
)
SeedField = Field(
    None,
    ge=0,
    le=MAX_SEED,
    description="Seed of numpy's PCG64 generator; omitted: a random seed is drawn and returned.",
)
ImagesField = Field(
    ...,
    min_length=1,
    description="PNG or JPEG images as base64 strings or data URLs (`data:image/png;base64,...`); any mode "
    f"and size, converted as training prepared data. At most {limit('max_images_per_request')}.",
)
LatentsField = Field(
    ...,
    min_length=1,
    description="Latent vectors, each of the model's latent_dim, finite, |value| <= "
    f"{limit('max_latent_abs')}. At most {limit('max_latents_per_request')}.",
)
Latents = list[list[float]]
PixelsField = Field(
    None,
    description='"sample": images drawn from p(x | z), seeded by `seed`; "mean": the decoder\'s mean image. '
    "Omitted: the model's default (its /v1/models entry says which): sample where a sampler graph draws the "
    "pixel groups one after another (a draw is an image, the mean a blend of every likely one), mean for "
    "factorised decoders (independent pixel draws only add speckle). The response says which it returned.",
)
PixelTemperatureField = Field(
    DEFAULT_PIXEL_TEMPERATURE,
    ge=0,
    le=MAX_PIXEL_TEMPERATURE,
    description='Temperature of the pixel draws (pixels "sample"), separate from the latent temperature: '
    "mixture weights softmax(logits / T), logistic scales T s, Bernoulli logits / T. 1: the model's own "
    "distribution; 0: each pixel's heaviest mixture component at its location (Bernoulli: p > 1/2).",
)
PixelSeedField = Field(
    None,
    ge=0,
    le=MAX_SEED,
    description='Seed of the pixel draws (pixels "sample"); omitted: a random seed is drawn and returned.',
)


class PixelOptions(BaseModel):
    """The pixel fields of every route that returns decoded images."""

    pixels: Literal["sample", "mean"] | None = PixelsField
    pixel_temperature: float = PixelTemperatureField


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------------------------


class EncodeOptions(_Options):
    model: str | None = ModelField
    version: int | None = VersionField
    sample: bool = Field(False, description="Also return z = mean + exp(log_var / 2) * eps, eps ~ N(0, I).")
    seed: int | None = SeedField


class EncodeRequest(EncodeOptions):
    images: list[str] = ImagesField


class DecodeOptions(_Options, PixelOptions):
    model: str | None = ModelField
    version: int | None = VersionField
    seed: int | None = PixelSeedField


class DecodeRequest(DecodeOptions):
    latents: Latents = LatentsField


class SampleRequest(_Options, PixelOptions):
    model: str | None = ModelField
    version: int | None = VersionField
    n: int = Field(1, ge=1, description=f"Number of samples; at most {limit('max_sample_n')}.")
    seed: int | None = SeedField
    temperature: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Scale of the prior draws: z ~ N(0, temperature^2 I), or under a mixture prior "
        "(`prior` on /v1/models) each component's standard deviation times temperature.",
    )
    label: str | int | None = Field(
        None,
        description='A class name from the model\'s `conditional.classes` on /v1/models (e.g. "Sneaker"; '
        "an integer is read as its decimal name, for digit classes). `conditional.kind` gaussian_per_class: "
        "z = mean_c + temperature * L_c eps, eps ~ N(0, I) from the seed, with the class's Gaussian fitted "
        "to the training encodings; prior_components_per_class: a component of the prior among the class's "
        "own, then z = its mean + temperature * its std * eps.",
        examples=["Sneaker"],
    )


class ReconstructOptions(_Options, PixelOptions):
    model: str | None = ModelField
    version: int | None = VersionField
    seed: int | None = PixelSeedField
    alpha: float | None = Field(
        None,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Significance level of `novel`: an image is flagged when its p-value is at most alpha "
        f"(omitted: {limit('novelty_alpha')}).",
    )


class ReconstructRequest(ReconstructOptions):
    images: list[str] = ImagesField


class InterpolateOptions(_Options, PixelOptions):
    model: str | None = ModelField
    version: int | None = VersionField
    seed: int | None = PixelSeedField
    steps: int = Field(
        8,
        ge=2,
        description=f"Points on the path, endpoints included; at most {limit('max_interpolate_steps')}.",
    )
    method: Literal["lerp", "slerp"] = Field(
        "lerp", description="lerp: straight line; slerp: great circle (keeps a typical norm under the prior)."
    )


class InterpolateRequest(InterpolateOptions):
    images: list[str] | None = Field(
        None, min_length=2, max_length=2, description="Two images; their encoder means are the endpoints."
    )
    latents: Latents | None = Field(None, min_length=2, max_length=2, description="Two latent vectors.")


# --- responses ---------------------------------------------------------------------------------------------


class _ModelTagged(BaseModel):
    model: str = Field(description="Name of the model that answered.")
    version: int = Field(description="Its version.")


class _PixelTagged(_ModelTagged):
    pixels: Literal["sample", "mean"] = Field(
        description="Which images these are: drawn from p(x | z) or the decoder's mean (also in the "
        "`X-Pixels` header)."
    )
    pixel_temperature: float | None = Field(None, description="The pixel temperature, for drawn images.")


class EncodeResponse(_ModelTagged):
    latent_dim: int
    mean: Latents = Field(description="Posterior means, (N, latent_dim).")
    log_var: Latents = Field(description="Posterior log-variances, (N, latent_dim).")
    z: Latents | None = Field(None, description="Sampled latents when `sample` was true.")
    seed: int | None = Field(None, description="The seed used for `z`.")


class DecodeResponse(_PixelTagged):
    images: list[str] = Field(description="Base64 PNGs, one per latent.")
    seed: int | None = Field(None, description="The seed of the pixel draws, for drawn images.")


class SampleResponse(_PixelTagged):
    images: list[str]
    latents: Latents
    seed: int
    temperature: float
    label: str | None = Field(None, description="The class sampled from, when the request gave one.")


class ReconstructResponse(_PixelTagged):
    images: list[str] = Field(
        description="Base64 PNG reconstructions at z = encoder mean (the decoder mean, or a draw: `pixels`)."
    )
    scores: list[float] = Field(
        description="Negative ELBO per image in nats: -log p(x | z = mean) summed over pixels plus the exact "
        "KL(q(z|x) || N(0, I)); under a mixture prior (see /v1/models) the KL is the deterministic upper "
        "bound -log sum_k w_k exp(-KL(q || p_k)). Not a novelty score: images simpler than the training "
        "data (MNIST under a Fashion-MNIST model, flat images under a colour model) score lower than its own "
        "test images; use `novelty` and `p_values`."
    )
    mse: list[float] = Field(description="Mean squared error per pixel between image and reconstruction.")
    mean: Latents
    log_var: Latents
    novelty: list[float] = Field(
        description="Per image, higher = more novel (`novelty_statistic`; docs/novelty.md): "
        "complexity_zlib_up = bits_per_dim - codec_bits_per_dim (input complexity, Serra et al. 2020) for "
        "likelihoods that are code lengths of 8-bit images; neg_elbo_bits = bits_per_dim otherwise."
    )
    novelty_statistic: Literal["complexity_zlib_up", "neg_elbo_bits"]
    p_values: list[float] | None = Field(
        description="Conformal p-value per image, (1 + #{calibration >= novelty}) / (n + 1) over the n "
        "held-out in-distribution images of the version's calibration file; null when it ships none "
        "(`p_values_reason` says so)."
    )
    novel: list[bool] | None = Field(description="p_values <= alpha per image; null without p-values.")
    alpha: float = Field(description="The significance level `novel` used.")
    calibration_images: int | None = Field(description="n, the calibration file's image count; or null.")
    p_values_reason: str | None = Field(description="Why there are no p-values; null when there are.")
    kl: list[float] = Field(description="KL(q(z|x) || p(z)) per image in nats, the score's second term.")
    bits_per_dim: list[float] = Field(description="The score in bits per dimension (C H W ln 2).")
    codec_bits_per_dim: list[float] = Field(
        description="zlib's (level 9) code length of the 8-bit image after PNG's Up filter, bits per "
        "dimension."
    )
    complexity: list[float] = Field(description="bits_per_dim - codec_bits_per_dim.")
    seed: int | None = Field(None, description="The seed of the pixel draws, for drawn images.")


class InterpolateResponse(_PixelTagged):
    method: Literal["lerp", "slerp"]
    images: list[str]
    latents: Latents
    seed: int | None = Field(None, description="The seed of the pixel draws (one draw for the whole path).")


class ManifoldResponse(_ModelTagged):
    size: int
    image: str = Field(description="The grid as one base64 PNG, rows from high to low z2.")
    latents: Latents


class VersionInfo(BaseModel):
    """One loaded version: a summary of its manifest and its test-set metrics."""

    version: int
    newest: bool = Field(description="Answers requests that pin no version.")
    created: str = Field(description="When it was exported (ISO 8601).")
    description: str
    latent_dim: int
    likelihood: str
    dataset: str
    providers: list[str] = Field(description="Active onnxruntime execution providers.")
    sha256: dict[str, str] = Field(description="Of its encoder and decoder files.")
    metrics: dict[str, Any] | None = Field(
        None, description="Test-set numbers from its manifest (nats per image; see training.evaluate)."
    )


class ModelInfo(BaseModel):
    name: str
    version: int | None = Field(None, description="The newest loaded version (answers unpinned requests).")
    versions: list[VersionInfo] = Field(
        default_factory=list, description="Every loaded version, ascending (the version policy keeps them)."
    )
    ready: bool
    default: bool
    latent_dim: int | None = None
    providers: list[str] = Field(default_factory=list, description="Active onnxruntime execution providers.")
    error: str | None = Field(None, description="Why the model is not served.")
    pixels: dict[str, Any] | None = Field(
        None, description="`default`: what `pixels` is when a request omits it; `choices`: what it accepts."
    )
    reload_error: str | None = Field(
        None, description="Why a newer version was refused by hot reload (this version keeps serving)."
    )
    manifest: dict[str, Any] | None = None


class ServingPlan(BaseModel):
    """How `vae-serve` runs: the worker plan it chose from the machine, and why (`service.server.workers`)."""

    workers: int = Field(description="Worker processes serving this port.")
    intra_op_threads: int = Field(description="onnxruntime intra-op threads per session (0: its default).")
    device: Literal["cpu", "cuda"]
    reason: str = Field(description="Why this plan: the cores or GPUs found, or the flags given.")
    pid: int = Field(description="The worker process that answered.")
    slot: int | None = Field(None, description="The worker's slot on a CUDA plan with several workers.")
    gpus: int = Field(0, description="GPUs the workers are spread over (cuda), each worker pinned to one.")
    gpu_mem_limit_mb: int = Field(
        0, description="Each worker's share of its card in MiB, the cap on its CUDA arenas; 0: none."
    )
    cuda_visible_devices: str | None = Field(
        None, description="The GPU this worker is pinned to (its CUDA_VISIBLE_DEVICES), on a CUDA plan."
    )


class ModelsResponse(BaseModel):
    default_model: str
    serving: ServingPlan | None = Field(
        None, description="The worker plan; null when the app runs outside `vae-serve` (e.g. in tests)."
    )
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    draining: bool = Field(description="SIGTERM received: finishing in-flight requests, then exiting.")
    models: dict[str, bool]
    versions: dict[str, int] = Field(description="The version each served model answers with.")
    failures: dict[str, str]
    reload_failures: dict[str, str] = Field(
        description="Newer versions refused by hot reload; the versions in `versions` keep serving."
    )
    default_model: str
