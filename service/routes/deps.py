"""What handlers need from the app: the settings and the model registry.

Plain functions over `request.app.state`, not FastAPI dependencies: the dependency machinery costs ~15 us per
dependency per request, a measurable share of a small decode (see docs/benchmarks.md).
"""

from __future__ import annotations

from starlette.requests import Request

from service.config import Settings
from service.inference import ModelRegistry


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def registry_of(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry
