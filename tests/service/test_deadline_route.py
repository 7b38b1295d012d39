"""DeadlineRoute calls an endpoint directly only when FastAPI would have had nothing to resolve, and answers
exactly as FastAPI's own handler does: same defaults, same 422s once a query string is there, same timeout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from service.http.deadline import DeadlineRoute, direct_defaults
from service.http.error_handlers import install_error_handlers
from service.http.routes import embeddings, v1, v2

router = APIRouter(route_class=DeadlineRoute)
calls: list[str] = []


@router.get("/query")
async def query_only(
    request: Request,
    n: Annotated[int, Query(ge=1, le=5)] = 2,
    name: Annotated[str | None, Query(pattern=r"^[a-z]+$")] = None,
) -> Response:
    calls.append(request.url.path)
    return JSONResponse({"n": n, "name": name})


@router.get("/items/{item}")
async def with_path(item: int) -> Response:
    return JSONResponse({"item": item})


@router.get("/needs")
async def with_dependency(value: Annotated[int, Depends(lambda: 7)]) -> Response:
    return JSONResponse({"value": value})


@router.get("/background")
async def with_background(tasks: BackgroundTasks) -> Response:
    return JSONResponse({})


@router.get("/required")
async def with_required(n: int) -> Response:
    return JSONResponse({"n": n})


@router.get("/plain")
async def returns_a_dict() -> dict[str, int]:
    return {"a": 1}


@router.get("/sync")
def sync_endpoint() -> Response:
    return JSONResponse({})


@router.get("/slow")
async def slow(request: Request) -> Response:
    await asyncio.Event().wait()  # never set: only the deadline ends this
    return JSONResponse({})


def _route(path: str) -> DeadlineRoute:
    return next(r for r in router.routes if getattr(r, "path", None) == path)  # type: ignore[return-value]


def test_only_query_only_endpoints_that_return_responses_are_called_directly():
    assert direct_defaults(_route("/query").dependant) == {"n": 2, "name": None}
    assert direct_defaults(_route("/slow").dependant) == {}
    for path in ("/items/{item}", "/needs", "/background", "/required", "/plain", "/sync"):
        assert direct_defaults(_route(path).dependant) is None, path


def test_the_service_routes_that_take_the_direct_call():
    routes = [r for m in (v1, v2, embeddings) for r in m.router.routes]
    direct = {r.path for r in routes if direct_defaults(r.dependant) is not None}
    assert {"/v1/decode", "/v1/encode", "/v1/sample", "/v1/manifold", "/v1/embeddings"} <= direct
    assert "/v2/models/{model_name}/infer" not in direct  # path parameters: FastAPI resolves them


def _get(path: str, timeout_s: float = 30.0) -> httpx.Response:
    app = FastAPI()
    app.state.settings = SimpleNamespace(request_timeout_s=timeout_s)
    install_error_handlers(app)
    app.include_router(router)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return asyncio.run(main())


def test_without_a_query_string_the_endpoint_gets_its_defaults():
    calls.clear()
    r = _get("/query")
    assert (r.status_code, r.json(), calls) == (200, {"n": 2, "name": None}, ["/query"])


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ("?n=3&name=abc", 200, {"n": 3, "name": "abc"}),
        ("?n=9", 422, None),
        ("?name=ABC", 422, None),
    ],
)
def test_with_a_query_string_fastapi_validates_as_before(query, status, body):
    r = _get("/query" + query)
    assert r.status_code == status
    if body is not None:
        assert r.json() == body
    else:
        assert r.json()["error_type"] == "invalid_input"
        assert r.json()["detail"][0]["loc"][0] == "query"


def test_other_endpoints_still_go_through_fastapi():
    assert _get("/items/3").json() == {"item": 3}
    assert _get("/needs").json() == {"value": 7}
    assert _get("/plain").json() == {"a": 1}
    assert _get("/required").status_code == 422


def test_a_direct_call_still_has_the_deadline():
    r = _get("/slow", timeout_s=0.05)
    assert r.status_code == 504 and r.json()["error_type"] == "timeout"
