"""Liveness, readiness and Prometheus metrics: open even when API keys are configured."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.errors import NotReady
from service.http.deps import registry_of
from service.http.error_handlers import responses
from service.http.responses import NumpyJSONResponse
from service.http.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> Response:
    return NumpyJSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: every configured model loaded, verified and warmed up",
    responses=responses(NotReady),
)
async def readyz(request: Request) -> Response:
    registry = registry_of(request)
    body = registry.readiness()
    return NumpyJSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
