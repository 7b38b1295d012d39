"""Optional API keys: a pure ASGI check in front of the API, documented in OpenAPI as two security schemes.

Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>` and are compared in constant time. Health,
readiness, metrics, the docs and the web page stay open. A middleware rather than a FastAPI dependency: the
dependency machinery costs more per request than everything else a small decode does.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Unauthorized
from service.http.matching import matched_route

PROTECTED_PREFIXES = ("/v1/", "/v2/")
# OIP health probes (KServe, Kubernetes) carry no credentials, like /healthz and /readyz.
OPEN_PREFIXES = ("/v2/health/",)


def key_matches(offered: bytes, keys: list[bytes]) -> bool:
    # Compare against every key without stopping early: timing reveals neither a key nor which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    return matched and bool(offered)


def offered_key(headers: Headers) -> bytes:
    auth = headers.get("authorization", "")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip().encode()
    return headers.get("x-api-key", "").encode()


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
            and scope["path"].startswith(PROTECTED_PREFIXES)
            and not scope["path"].startswith(OPEN_PREFIXES)
            and not key_matches(offered_key(Headers(scope=scope)), self.keys)
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
            if path.startswith(PROTECTED_PREFIXES):
                for op in operations.values():
                    op["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
