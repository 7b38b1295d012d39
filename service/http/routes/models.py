"""Model listing: manifests, active execution providers, readiness, which model is the default, and every
loaded version (the top-level fields describe the newest, which answers unpinned requests)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import ModelNotFound, Unauthorized
from service.http.deps import registry_of
from service.http.error_handlers import responses
from service.http.responses import NumpyJSONResponse
from service.http.schemas import ModelInfo, ModelsResponse
from service.inference import ModelRegistry, VAEModel

router = APIRouter(prefix="/v1", tags=["models"])


def _version(model: VAEModel, newest: bool) -> dict[str, Any]:
    m = model.manifest
    return {
        "version": m.version,
        "newest": newest,
        "created": m.created.isoformat(),
        "description": m.description,
        "latent_dim": m.latent_dim,
        "likelihood": m.likelihood,
        "dataset": m.dataset.name,
        "providers": model.providers,
        "sha256": {"encoder": m.encoder.sha256, "decoder": m.decoder.sha256},
        "metrics": m.metrics.model_dump(mode="json") if m.metrics is not None else None,
    }


def _info(registry: ModelRegistry, name: str) -> dict[str, Any]:
    model = registry.models.get(name)
    base = {
        "name": name,
        "default": name == registry.default_name,
        "ready": model is not None,
        "reload_error": registry.reload_failures.get(name),
    }
    if model is None:
        return {**base, "version": None, "versions": [], "latent_dim": None, "providers": [],
                "manifest": None, "error": registry.failures.get(name, "not loaded")}  # fmt: skip
    loaded = registry.versions.get(name, {})
    versions = [_version(loaded[v], loaded[v] is model) for v in sorted(loaded)]
    return {**base, **model.describe(), "versions": versions, "error": None}


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="Every configured model",
    responses=responses(Unauthorized),
)
async def list_models(request: Request) -> Response:
    registry = registry_of(request)
    names = registry.names or sorted(registry.models)
    serving = getattr(request.app.state, "serving", None)  # set by service.server.workers under vae-serve
    body = {"default_model": registry.default_name, "serving": serving}
    return NumpyJSONResponse({**body, "models": [_info(registry, n) for n in names]})


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    summary="One model",
    responses=responses(ModelNotFound, Unauthorized),
)
async def get_model(name: str, request: Request) -> Response:
    registry = registry_of(request)
    if name not in registry.names and name not in registry.models:
        raise ModelNotFound(f"unknown model {name!r}")
    return NumpyJSONResponse(_info(registry, name))
