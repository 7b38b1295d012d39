"""The route the app's router would pick for a request, found without running the router.

For the middlewares that act on a route before the router runs: the API key check counts a refused request
under its route template, and the hot path serves a route only where the router would have picked it too.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def matched_route(scope: Scope, routes: list[BaseRoute]) -> BaseRoute | None:
    """The route the router would pick (a path match with the wrong method counts, as Starlette's does)."""
    return search(scope, routes)[1]


def search(scope: Scope, routes: list[BaseRoute]) -> tuple[Match, BaseRoute | None]:
    """The first full match in the router's order, else the first partial one (right path, wrong method)."""
    partial: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        found: BaseRoute | None = route
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None:  # FastAPI's wrapper of an included router: the route is one of its own
            match, found = search(scope, included)
        if found is None:
            continue
        if match is Match.FULL:
            return match, found
        partial = partial or found
    return (Match.PARTIAL if partial is not None else Match.NONE), partial
