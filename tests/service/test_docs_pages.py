"""/docs and /redoc work offline: every script, style and icon they load is served by the service itself."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_another_host(client, page):
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert "/openapi.json" in html
    assert re.findall(r"https?://", html) == []  # no CDN, no fonts, no favicon from elsewhere
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(url.startswith("/docs-assets/") for url in assets), assets
    for url in assets:
        served = client.get(url)
        assert served.status_code == 200 and len(served.content) > 1000, url


def test_the_swagger_bundle_is_a_script_and_unknown_assets_are_404(client):
    bundle = client.get("/docs-assets/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"] and b"SwaggerUIBundle" in bundle.content
    assert client.get("/docs-assets/../config.py").status_code == 404
    assert client.get("/docs-assets/nothing.js").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_the_docs_pages_stay_out_of_the_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
