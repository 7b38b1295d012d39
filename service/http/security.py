"""Optional API keys: a pure ASGI check in front of the API, documented in OpenAPI as two security schemes.

Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>` and are compared in constant time. Health,
readiness, metrics, the docs and the web page stay open. A middleware rather than a FastAPI dependency: the
dependency machinery costs more per request than everything else a small decode does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api_keys import key_matches, offered_key
from service.errors import Unauthorized
from service.http.matching import matched_route
from service.http.paths import API_PREFIXES, API_ROOTS, OIP_HEALTH_PREFIX

PROTECTED_PREFIXES = API_PREFIXES
PROTECTED_ROOTS = API_ROOTS  # `GET /v2` is the OIP server metadata: keyed, as gRPC's ServerMetadata is
# OIP health probes (KServe, Kubernetes) carry no credentials, like /healthz and /readyz.
OPEN_PREFIXES = (OIP_HEALTH_PREFIX,)


def is_protected(path: str) -> bool:
    """Whether `path` needs a key (when keys are set): the API, except the OIP health probes."""
    return (path.startswith(PROTECTED_PREFIXES) or path in PROTECTED_ROOTS) and not path.startswith(
        OPEN_PREFIXES
    )


class ApiKeyMiddleware:
    """401 for protected paths without a valid key. `routes` (the app's, live) let a refused request be
    counted under its route template in the metrics, as if the router had seen it."""

    def __init__(self, app: ASGIApp, keys: list[bytes], routes: list[BaseRoute] | None = None):
        if not keys:
            raise ValueError("ApiKeyMiddleware needs at least one key")
        self.app = app
        self.keys = keys
        self.routes = routes if routes is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"  # CORS preflights carry no credentials
            and is_protected(scope["path"])
            and not key_matches(offered_key(Headers(scope=scope).get), self.keys)
        ):
            if (route := matched_route(scope, self.routes)) is not None:
                scope["route"] = route
            err = Unauthorized()
            await JSONResponse(err.body(), status_code=err.status, headers=err.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def document_api_keys(app: FastAPI) -> None:
    """Declare the two schemes and require one of them on every protected operation in /openapi.json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )  # fmt: skip
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "API key as a bearer token."}
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, operations in schema.get("paths", {}).items():
            if is_protected(path):
                for op in operations.values():
                    op["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
