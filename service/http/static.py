"""The web page (service/static/, html=True) mounted at `/`, behind every API route.

A mount at `/` fully matches every path, which would turn an API route's 405 (wrong method) into the static
files' 404; API prefixes are therefore never handed to the mount.

Every file of the page is sent with a strict Content-Security-Policy (its own script and stylesheet, images
from itself or the `data:` URLs the API answers with, requests to itself only, no plugins, frames or base
rewrites) and `X-Content-Type-Options: nosniff`, so an injected string can neither run script nor be read as
another type than the one sent.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import Scope

from service.http.paths import API_PREFIXES

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _PageFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


class _PageMount(Mount):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("path", "").startswith(API_PREFIXES):
            return Match.NONE, {}
        return super().matches(scope)


def page_mount(directory: Path) -> Mount:
    return _PageMount("/", app=_PageFiles(directory=directory, html=True), name="static")
