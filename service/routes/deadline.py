"""The request timeout over a whole request: reading its body, decoding, queueing, inference and rendering.

Routers of the inference protocols use `DeadlineRoute`; past `request_timeout_s` the handler is cancelled
(which drops its queued decoding and batcher work) and the client gets 504 `timeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from service.errors import Timeout

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DeadlineRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            timeout_s: float = request.app.state.settings.request_timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    return await handler(request)
            except TimeoutError:
                raise Timeout(f"the request did not finish within {timeout_s:g} s") from None

        return bounded
