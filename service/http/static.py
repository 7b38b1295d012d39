"""The web page (service/static/, html=True) mounted at `/`, behind every API route.

A mount at `/` fully matches every path, which would turn an API route's 405 (wrong method) into the static
files' 404; API prefixes are therefore never handed to the mount.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.staticfiles import StaticFiles
from starlette.routing import Match, Mount
from starlette.types import Scope

API_PREFIXES = ("/v1/", "/v2/")


class _PageMount(Mount):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("path", "").startswith(API_PREFIXES):
            return Match.NONE, {}
        return super().matches(scope)


def page_mount(directory: Path) -> Mount:
    return _PageMount("/", app=StaticFiles(directory=directory, html=True), name="static")
