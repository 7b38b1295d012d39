"""The hot inference requests straight to their route's handler, in front of the router and FastAPI's layers.

A request for a route whose endpoint `DeadlineRoute` calls directly (service.http.deadline), without a
query string, needs nothing from the router or from FastAPI's per-request machinery: the handler parses its
own body and reads its settings from the app. `ServiceApp` (the app `create_app` makes) serves such a
request through a second stack built from the same parts as its usual one:

    usual:  FastAPI telemetry check -> ServerErrorMiddleware -> telemetry and body-size layers
            -> the app's middlewares -> ExceptionMiddleware -> exit stack -> router -> FastAPI's route wrapper
            -> the route's handler
    hot:    ServerErrorMiddleware -> the app's middlewares -> ExceptionMiddleware -> the route's handler

The same middleware classes with the same arguments (request id, access log, metrics, client disconnects,
API keys, body cap, CORS, tracing: whatever the app was given), the same exception handlers, the same
handler (deadline, direct endpoint call), and the scope names the route as the router's match would have
(`route`, `endpoint`, `path_params`, set where the router sets them, so a request refused before it is
labelled as before). Skipped are only layers that have nothing to do for such a request: FastAPI's own
telemetry (the hot stack is used only while it is off, i.e. no global OpenTelemetry provider is set;
service.tracing keeps its provider to itself), FastAPI's body-size layers (the app sets no max_body_size;
service.http.middleware.BodyLimitMiddleware caps bodies), the exit stacks (for dependencies, which direct
endpoints have none of), the router's matching (an included router's routes are matched twice, through
their per-inclusion copies) and FastAPI's wrapper around the handler: a quarter of the Python calls of a
one-latent decode through the app, 2-13% of its CPU time on a busy 2-core host (docs/benchmarks.md).

The table of hot routes is built with the stack, when Starlette builds it (the first call: every route and
middleware is in by then). A route is in it for a method only where the router would pick that very route
for its path and method, so an earlier route with the same path still wins, as it would in the router.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.deadline import DeadlineRoute
from service.http.matching import search


class ServiceApp(FastAPI):
    """FastAPI, with a hot path for the directly called inference routes (see the module doc)."""

    # False: every request takes the usual stack (tests compare the two paths with it).
    serve_hot = True
    _hot: HotPath | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        self._hot = HotPath(self) if self.serve_hot and self._hot_capable() else None
        return stack

    def _hot_capable(self) -> bool:
        # Layers the hot stack leaves out must have nothing to do: no app-wide FastAPI body limit, no root
        # path to set, and FastAPI's telemetry reachable to ask whether it is on.
        return getattr(self, "max_body_size", None) is None and not self.root_path and self._telemetry_off()

    def _telemetry_off(self) -> bool:
        telemetry = getattr(self, "_native_telemetry", None)
        return telemetry is not None and not telemetry.enabled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self._hot
        if (
            hot is not None
            and scope["type"] == "http"
            and not scope.get("query_string")
            and (scope["method"], scope["path"]) in hot.routes
            and "fastapi.telemetry" not in scope
            and self._telemetry_off()
        ):
            scope["app"] = self
            await hot.stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class HotPath:
    """The hot routes of an app and the stack that serves them. The app's middlewares are made a second time
    here, with the arguments they were added with; the service's own keep no state per instance (the
    metrics, keys and settings they are given are shared objects)."""

    def __init__(self, app: FastAPI):
        self.routes = hot_routes(app.router.routes)
        # Exception handlers split as Starlette splits them: 500 and Exception to the outermost layer.
        error_handler = None
        handlers: dict[Any, Any] = {}
        for key, value in app.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value
        stack: ASGIApp = ExceptionMiddleware(self._route, handlers=handlers, debug=app.debug)
        for cls, args, kwargs in reversed(app.user_middleware):
            stack = cls(stack, *args, **kwargs)
        self.stack = ServerErrorMiddleware(stack, handler=error_handler, debug=app.debug)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes[(scope["method"], scope["path"])]
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}  # the router's
        await self._handle(scope, receive, send)

    @staticmethod
    async def _handle(scope: Scope, receive: Receive, send: Send) -> None:
        route: DeadlineRoute = scope["route"]
        response = await route.handler(Request(scope, receive, send))
        await response(scope, receive, send)


def hot_routes(routes: list[BaseRoute]) -> dict[tuple[str, str], DeadlineRoute]:
    """(method, path) -> route, for the directly called routes without path parameters that the router
    would pick for exactly that method and path."""
    table: dict[tuple[str, str], DeadlineRoute] = {}
    for route in _flatten(routes):
        if not isinstance(route, DeadlineRoute) or not route.direct or route.param_convertors:
            continue
        for method in route.methods or ():
            if search(_probe(method, route.path), routes) == (Match.FULL, route):
                table[(method, route.path)] = route
    return table


def _flatten(routes: list[BaseRoute]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for route in routes:
        included = getattr(getattr(route, "original_router", None), "routes", None)
        out.extend(_flatten(included) if included is not None else [route])
    return out


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
