"""The request timeout over a whole request: reading its body, decoding, queueing, inference and rendering.

Routers of the inference protocols use `DeadlineRoute`; past `request_timeout_s` the handler is cancelled
(which drops its queued decoding and batcher work) and the client gets 504 `timeout`.

The route also calls its endpoint directly when FastAPI would have nothing to do: the endpoint takes the
request and optional query parameters only (handlers parse their own bodies, see service.http.requests),
and the request has no query string, so every parameter is its default. FastAPI's request handler (body
probe, dependency solving with a validator per parameter, endpoint context) was about a tenth of a small
decode's CPU. With a query string, or for endpoints with path parameters or dependencies, FastAPI's handler
runs as before, so validation and its 422s are FastAPI's own.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from service.errors import Timeout

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def direct_defaults(dependant: Dependant) -> dict[str, Any] | None:
    """The keyword arguments of a query-less call (every query parameter's default), or None when the
    endpoint needs anything FastAPI resolves per request (path, header, cookie or body parameters,
    dependencies, injected Response or BackgroundTasks, a required query parameter) or does not say that it
    returns a Response (anything else FastAPI serializes)."""
    call = dependant.call
    if call is None or not inspect.iscoroutinefunction(call) or not _returns_response(call):
        return None
    resolved = (
        dependant.path_params, dependant.header_params, dependant.cookie_params, dependant.body_params,
        dependant.dependencies,
    )  # fmt: skip
    injected = (
        dependant.websocket_param_name, dependant.http_connection_param_name, dependant.response_param_name,
        dependant.background_tasks_param_name, dependant.security_scopes_param_name,
    )  # fmt: skip
    if any(resolved) or any(name is not None for name in injected):
        return None
    if any(f.field_info.is_required() for f in dependant.query_params):
        return None
    return {f.name: f.field_info.get_default(call_default_factory=True) for f in dependant.query_params}


def _returns_response(call: Callable[..., Any]) -> bool:
    try:
        returns = typing.get_type_hints(call).get("return")
    except (NameError, TypeError):  # an annotation that does not resolve: let FastAPI handle it
        return False
    return isinstance(returns, type) and issubclass(returns, Response)


class DeadlineRoute(APIRoute):
    # The route's handler (deadline included) as FastAPI's request_response calls it, and whether a request
    # without a query string reaches the endpoint with nothing of FastAPI's in between: then
    # service.http.hot_path may call `handler` itself instead of going through the router.
    handler: Handler
    direct: bool

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        defaults = direct_defaults(self.dependant)
        endpoint, request_param = self.dependant.call, self.dependant.request_param_name

        async def bounded(request: Request) -> Response:
            timeout_s: float = request.app.state.settings.request_timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    if defaults is None or request.scope.get("query_string"):
                        return await handler(request)
                    assert endpoint is not None
                    kwargs = {request_param: request, **defaults} if request_param else defaults
                    response: Response = await endpoint(**kwargs)
                    return response
            except TimeoutError:
                raise Timeout(f"the request did not finish within {timeout_s:g} s") from None

        self.handler, self.direct = bounded, defaults is not None
        return bounded
