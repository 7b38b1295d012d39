"""The hot inference requests straight to their route's handler: a lookup in front of the router's matching,
inside the one middleware stack Starlette builds.

Every request passes the same layers, in the same order (FastAPI's, the app's middlewares, ExceptionMiddleware
with the app's handlers). Where the router would then match the request against its routes (an included
router's routes through their per-inclusion wrappers, each matched twice) and FastAPI would wrap the handler,
a request for a route whose endpoint `DeadlineRoute` calls directly (service.http.deadline), without a query
string, is handed to that route's handler after one dict lookup:

    ServerErrorMiddleware -> FastAPI's layers -> the app's middlewares -> ExceptionMiddleware
        -> FastAPI's exit stack -> Router -> HotPath -> the route's handler         (a hot route)
                                                     -> the router's matching ...   (anything else)

The lookup is installed as the router's `middleware_stack`, Starlette's hook for a router's own middleware
(`Router.__call__` runs it; the matching is its innermost app), so nothing private of FastAPI's is read. It
sets the scope keys the router's match would have set (`router`, `route`, `endpoint`, `path_params`), so the
middlewares that label a request by its route see the same. It steps aside when the router has work to do
for the request anyway: a query string (FastAPI's handler validates the parameters), a root path (the router
strips it), FastAPI's telemetry (it records the matched route).

The table is built from the routes of the routers `create_app` includes, in the order it includes them,
before anything else is added to the app: a route is in it for a method only where the router would pick
that very route for its path and method (an earlier route with the same path still wins, as it would in the
router). What the lookup saves is the router's matching and FastAPI's wrapper around the handler
(docs/benchmarks.md, `python -m bench.hot_path_ab`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.deadline import DeadlineRoute
from service.http.matching import search


class HotPath:
    """The hot routes of an app in front of its router's matching (`fallback`)."""

    def __init__(self, router: Router, routes: Sequence[BaseRoute], fallback: ASGIApp):
        self.router = router
        self.routes = hot_routes(routes)
        self.fallback = fallback
        self.enabled = True  # False: every request takes the router (tests and bench.hot_path_ab compare)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.enabled
            and scope["type"] == "http"
            and not scope.get("query_string")
            and not scope.get("root_path")
            and scope.get("fastapi.telemetry") is None
            and (route := self.routes.get((scope["method"], scope["path"]))) is not None
        ):
            # The keys the router's match would have set.
            scope.setdefault("router", self.router)
            scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
            await self._handle(scope, receive, send)
            return
        await self.fallback(scope, receive, send)

    @staticmethod
    async def _handle(scope: Scope, receive: Receive, send: Send) -> None:
        route: DeadlineRoute = scope["route"]
        response = await route.handler(Request(scope, receive, send))
        await response(scope, receive, send)


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> HotPath:
    """Put the lookup for `routes` (the app's first routes, in the router's order) in front of the app's
    router's matching."""
    hot = HotPath(app.router, routes, app.router.middleware_stack)
    app.router.middleware_stack = hot
    return hot


def hot_path_of(app: FastAPI) -> HotPath | None:
    stack = app.router.middleware_stack
    return stack if isinstance(stack, HotPath) else None


def hot_routes(routes: Sequence[BaseRoute]) -> dict[tuple[str, str], DeadlineRoute]:
    """(method, path) -> route, for the directly called routes without path parameters that the router
    would pick for exactly that method and path."""
    table: dict[tuple[str, str], DeadlineRoute] = {}
    for route in routes:
        if not isinstance(route, DeadlineRoute) or not route.direct or route.param_convertors:
            continue
        for method in route.methods or ():
            if search(_probe(method, route.path), routes) == (Match.FULL, route):
                table[(method, route.path)] = route
    return table


def _probe(method: str, path: str) -> dict[str, Any]:
    """A request scope as the router sees one, for matching only."""
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": (),
    }
