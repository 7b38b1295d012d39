"""The route the app's router would pick for a request, found without running the router.

For the layers that act on a route before the router runs: the API key check counts a refused request under
its route template, and the hot path serves a route only where the router would have picked it too. Both
are given the routes of the routers `create_app` includes, in the router's order (plain routes: Starlette's
public `matches` is all this needs).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def matched_route(scope: Scope, routes: Sequence[BaseRoute]) -> BaseRoute | None:
    """The route the router would pick (a path match with the wrong method counts, as Starlette's does)."""
    return search(scope, routes)[1]


def search(scope: Scope, routes: Sequence[BaseRoute]) -> tuple[Match, BaseRoute | None]:
    """The first full match in the router's order, else the first partial one (right path, wrong method)."""
    partial: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return match, route
        if match is Match.PARTIAL:
            partial = partial or route
    return (Match.PARTIAL if partial is not None else Match.NONE), partial
