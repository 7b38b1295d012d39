"""The hot path (a lookup in front of the router, inside the one middleware stack) answers exactly as the
router and FastAPI's handler do: same status, headers and bytes, for
successes and for every kind of refusal, with the same metrics; requests it does not take go the usual way."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import TestClient, make_settings

from service.http.hot_path import HotPath, hot_path_of
from service.main import create_app

RID = {"X-Request-ID": "same-id-on-both-paths"}


@pytest.fixture
def taken(monkeypatch) -> list[str]:
    """The paths of the requests the hot path served."""
    paths: list[str] = []
    handle = HotPath._handle

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope["path"])
        await handle(scope, receive, send)

    monkeypatch.setattr(HotPath, "_handle", staticmethod(spy))
    return paths


@contextmanager
def both(models_dir: Path, **overrides: Any) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps with the same settings: as served (hot path on), and with every request taking the router."""
    hot_app = create_app(make_settings(models_dir, **overrides))
    cold_app = create_app(make_settings(models_dir, **overrides))
    hot_path = hot_path_of(cold_app)
    assert hot_path is not None
    hot_path.enabled = False
    with TestClient(hot_app) as hot, TestClient(cold_app) as cold:
        yield hot, cold


def same(hot: httpx.Response, cold: httpx.Response) -> httpx.Response:
    assert hot.status_code == cold.status_code
    assert hot.headers.multi_items() == cold.headers.multi_items()
    assert hot.content == cold.content
    return hot


def post_both(clients: tuple[TestClient, TestClient], path: str, **kwargs: Any) -> httpx.Response:
    headers = {**RID, **kwargs.pop("headers", {})}
    return same(*(c.post(path, headers=headers, **kwargs) for c in clients))


def test_the_hot_routes_are_the_directly_called_inference_routes(models_dir):
    hot_path = hot_path_of(create_app(make_settings(models_dir)))
    assert hot_path is not None
    table = hot_path.routes
    posts = {path for method, path in table if method == "POST"}
    assert {"/v1/decode", "/v1/encode", "/v1/sample", "/v1/reconstruct", "/v1/interpolate"} <= posts
    assert "/v1/embeddings" in posts
    assert ("GET", "/v1/manifold") in table
    assert not any("{" in path for _, path in table)  # path parameters: the router resolves them
    assert not any(path in ("/healthz", "/readyz", "/metrics", "/v1/models") for _, path in table)


def test_a_good_decode_is_the_same_on_both_paths(models_dir, taken):
    with both(models_dir) as clients:
        r = post_both(clients, "/v1/decode", json={"latents": [[0.1] * 8, [-0.2] * 8]})
        npy = post_both(clients, "/v1/decode", json={"latents": [[0.1] * 8]}, headers={"accept": "image/png"})
        sample = post_both(clients, "/v1/sample", json={"n": 2, "seed": 7})
    assert r.status_code == 200 and len(r.json()["images"]) == 2
    assert r.headers["x-request-id"] == RID["X-Request-ID"] and r.headers["x-model-version"] == "1"
    assert npy.headers["content-type"] == "image/png" and sample.headers["x-seed"] == "7"
    assert taken == ["/v1/decode", "/v1/decode", "/v1/sample"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"latents": [[0.1] * 3]}, "latents"),
        ({"latents": [[0.1] * 8], "unknown": 1}, "unknown"),
        (b"{not json", "malformed JSON"),
        ({"latents": [[0.1] * 8], "model": "nope"}, "nope"),
    ],
)
def test_bad_bodies_get_the_same_error_on_both_paths(models_dir, taken, body, message):
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    with both(models_dir) as clients:
        r = post_both(clients, "/v1/decode", **kwargs)
    assert r.status_code in (404, 422) and message in r.json()["error"]
    assert taken == ["/v1/decode"]


def test_oversized_bodies_get_the_same_413_on_both_paths(models_dir, taken):
    big = b'{"latents": [[' + b"0.0, " * 400 + b"0.0]]}"
    with both(models_dir, max_body_bytes=1024) as clients:
        declared = post_both(clients, "/v1/decode", content=big, headers={"content-type": "application/json"})
        # No Content-Length: the cap is found while the handler reads the body.
        chunks = [big[i : i + 256] for i in range(0, len(big), 256)]
        headers = {**RID, "content-type": "application/json"}
        chunked = same(*(c.post("/v1/decode", content=iter(chunks), headers=headers) for c in clients))
    for r in (declared, chunked):
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    assert taken == ["/v1/decode"]  # the declared one was refused by the body cap, before the hot path


def test_api_keys_are_checked_the_same_on_both_paths(models_dir, taken):
    good = {"latents": [[0.0] * 8]}
    with both(models_dir, api_keys="k1") as clients:
        missing = post_both(clients, "/v1/decode", json=good)
        wrong = post_both(clients, "/v1/decode", json=good, headers={"x-api-key": "k2"})
        ok = post_both(clients, "/v1/decode", json=good, headers={"authorization": "Bearer k1"})
    for r in (missing, wrong):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert ok.status_code == 200
    assert taken == ["/v1/decode"]  # refused requests never reach it


def test_a_timeout_is_the_same_504_on_both_paths(models_dir, taken):
    with both(models_dir, request_timeout_s=0.2, inline_run_us=0) as clients:
        released: list[threading.Event] = []
        for client in clients:
            batcher = client.app.state.service.registry.get("tiny").decoder_batcher  # type: ignore[attr-defined]
            real, release = batcher._run_fn, threading.Event()
            released.append(release)

            def slow(x: Any, real: Any = real, release: threading.Event = release) -> Any:
                release.wait(10)  # past the deadline, until the test lets it go
                return real(x)

            batcher._run_fn = slow
        try:
            r = post_both(clients, "/v1/decode", json={"latents": [[0.0] * 8]})
        finally:
            for release in released:
                release.set()
    assert r.status_code == 504 and "did not finish within 0.2 s" in r.json()["error"]
    assert taken == ["/v1/decode"]


def test_cors_headers_are_the_same_on_both_paths(models_dir, taken):
    origin = {"origin": "https://app.example"}
    with both(models_dir, cors_origins="https://app.example") as clients:
        r = post_both(clients, "/v1/decode", json={"latents": [[0.0] * 8]}, headers=origin)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert taken == ["/v1/decode"]


def test_requests_it_does_not_take_go_through_the_router(models_dir, taken):
    with both(models_dir) as clients:
        post_both(clients, "/v1/decode?model=tiny", json={"latents": [[0.0] * 8]})  # a query string
        post_both(clients, "/v1/decode?version=0", json={"latents": [[0.0] * 8]})  # FastAPI's 422
        same(*(c.put("/v1/decode", headers=RID) for c in clients))  # 405
        same(*(c.get("/v1/models", headers=RID) for c in clients))
    assert taken == []


def test_metrics_count_hot_requests_under_their_route(models_dir, taken):
    with both(models_dir) as (hot, _):
        for _ in range(3):
            assert hot.post("/v1/decode", json={"latents": [[0.0] * 8]}).status_code == 200
        assert hot.post("/v1/decode", json={"latents": [[0.0] * 3]}).status_code == 422
        text = hot.get("/metrics").text
    assert len(taken) == 4

    def value(pattern: str) -> float:
        found = re.search(pattern + r" (\S+)", text)
        assert found is not None, pattern
        return float(found.group(1))

    assert value(r'vae_http_requests_total\{method="POST",route="/v1/decode",status="200"\}') == 3
    assert value(r'vae_http_requests_total\{method="POST",route="/v1/decode",status="422"\}') == 1
    assert value(r'vae_http_request_duration_seconds_count\{route="/v1/decode"\}') == 4


def test_hot_requests_pass_every_layer_of_the_one_stack(models_dir, taken):
    """A middleware and an exception handler added after create_app see hot requests too: the lookup sits
    inside the stack Starlette builds, not beside it."""
    app = create_app(make_settings(models_dir))
    seen: list[str] = []

    class Tag:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.inner(scope, receive, send)

    app.add_middleware(Tag)
    with TestClient(app) as client:
        assert client.post("/v1/decode", json={"latents": [[0.0] * 8]}).status_code == 200
        assert client.get("/v1/models").status_code == 200
    assert seen == ["/v1/decode", "/v1/models"] and taken == ["/v1/decode"]
