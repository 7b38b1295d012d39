"""Service fixtures: apps over the session's tiny exported models, real MNIST digits as PNG uploads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from serving import TestClient, free_port, make_settings, serve, wait_until_ready

from service.config import Settings
from service.main import create_app
from vae_contract.imaging import encode_png

T = TypeVar("T")


def run_app(settings: Settings, fn: Callable[[httpx.AsyncClient, Any], Awaitable[T]]) -> T:
    """Run `fn(client, app)` against the app in one event loop, for tests that need concurrency."""

    async def main() -> T:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
                return await fn(client, app)

    return asyncio.run(main())


@pytest.fixture(scope="session")
def client(models_dir: Path) -> Iterator[TestClient]:
    """One app over the fixture models for every test that only reads."""
    with serve(models_dir) as c:
        yield c


@pytest.fixture(scope="session")
def digit_pngs(mnist_digits) -> list[bytes]:
    """The first 100 real MNIST test digits as PNG files."""
    images, _ = mnist_digits
    return [encode_png(img) for img in images]


@pytest.fixture
def serve_app() -> Callable[..., Any]:
    """`with serve_app(models_dir, **settings) as client:` an app with its own settings."""
    return serve


@pytest.fixture
def app_runner() -> Callable[..., Any]:
    """`app_runner(settings, async_fn)`: run async_fn(client, app) in one event loop (for concurrency)."""
    return run_app


@pytest.fixture
def live() -> Callable[..., Any]:
    """`with live(settings) as url:` a real uvicorn server on 127.0.0.1."""
    return live_server


@pytest.fixture
def settings_for() -> Callable[..., Settings]:
    return make_settings


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """uvicorn on 127.0.0.1 in a thread; yields the base URL once /readyz answers."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    if not wait_until_ready(url, 30):
        server.should_exit = True
        raise RuntimeError("live server did not become ready")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
