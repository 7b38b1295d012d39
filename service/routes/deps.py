"""What handlers need from the app: the settings, the model registry and the image decoding pool.

Plain functions over `request.app.state`, not FastAPI dependencies: the dependency machinery costs ~15 us per
dependency per request, a measurable share of a small decode (see docs/benchmarks.md).
"""

from __future__ import annotations

from starlette.requests import Request

from service.config import Settings
from service.inference import ModelRegistry
from service.inference.images import ImagePool


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
