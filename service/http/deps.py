"""What handlers need from the app: the settings, the model registry, the image decoding pool, and which model
version a request names.

Plain functions over `request.app.state`, not FastAPI dependencies: the dependency machinery costs ~15 us per
dependency per request, a measurable share of a small decode (see docs/benchmarks.md).
"""

from __future__ import annotations

import re

from starlette.requests import Request

from service.config import Settings
from service.errors import InvalidInput
from service.http.schemas import MODEL_REF_PATTERN
from service.inference import ModelRegistry, VAEModel
from service.inference.decode_pool import ImagePool

_MODEL_REF = re.compile(MODEL_REF_PATTERN.removesuffix("$") + r"\Z")  # `$` would also match before a newline


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def registry_of(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def image_pool_of(request: Request) -> ImagePool:
    """The app's one pool, made on first use (an app that never sees an image starts no decoding threads)."""
    state = request.app.state
    pool: ImagePool | None = getattr(state, "image_pool", None)
    if pool is None:
        pool = state.image_pool = ImagePool.from_settings(state.settings)
    return pool


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """`mnist` -> ("mnist", None); `mnist@2` -> ("mnist", 2)."""
    if _MODEL_REF.match(ref) is None:
        raise InvalidInput(f"model: {ref!r} is not a model name, optionally with @version (e.g. 'mnist@1')")
    name, _, version = ref.partition("@")
    return name, int(version) if version else None


def model_of(registry: ModelRegistry, model: str | None, version: int | None = None) -> VAEModel:
    """The model version a request names: `model` (None: the default model; `name@version` pins a version)
    and `version` (None: the newest loaded). A version that is not loaded is ModelNotFound naming the loaded
    ones; two different pins in one request are InvalidInput."""
    name, pinned = parse_model_ref(model) if model is not None else (None, None)
    if pinned is not None and version is not None and pinned != version:
        raise InvalidInput(f"version given twice: {model!r} and version {version}")
    return registry.get(name, pinned if pinned is not None else version)


def version_headers(model: VAEModel, headers: dict[str, str] | None = None) -> dict[str, str]:
    """`X-Model-Version`: the version that answered, on every successful response (beside the body's)."""
    return {**(headers or {}), "X-Model-Version": str(model.manifest.version)}
