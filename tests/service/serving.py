"""Helpers for tests that run the app: in process (`serve`, a TestClient), or as a real server on 127.0.0.1 (a
free port, waiting for /readyz, a `vae-serve` process over a copy of a committed model); and waiting for a
condition with a bound (`wait_until`, `until`), instead of sleeping for a guessed time. Test modules import
them from here by name (a module named `conftest` is ambiguous when several test folders run together)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings
from service.main import create_app

with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2; the httpx-based TestClient still drives the full ASGI stack.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: CPU provider (identical results everywhere), gRPC off unless a test gives it a
    port (see tests/service/test_grpc.py), everything else as configured."""
    return Settings(**{"models_dir": models_dir, "provider": "cpu", "grpc_port": 0, **overrides})


@contextmanager
def serve(models_dir: Path, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient whose app has run its lifespan (models loaded and warm)."""
    with TestClient(create_app(make_settings(models_dir, **overrides))) as client:
        yield client


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.01) -> None:
    """Poll `condition` until it holds; AssertionError once `timeout_s` passes without it."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached within {timeout_s:g} s"
        time.sleep(interval_s)


async def until(condition: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.001) -> None:
    """`wait_until` on an event loop: the other tasks run between polls."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached within {timeout_s:g} s"
        await asyncio.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll `url`/readyz until it answers 200 (True), the deadline passes or `proc` exits (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


def _wait_for(predicate: Callable[[str], bool], url: str, timeout_s: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if predicate(url):
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


ROOT = Path(__file__).resolve().parents[2]


def committed_model(target: Path, name: str = "mnist-2d") -> Path:
    """A models/ folder in `target` holding a copy of one committed model (no training needed)."""
    models = target / "models"
    shutil.copytree(ROOT / "models" / name, models / name)
    return models


@contextmanager
def vae_serve(
    models_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    preexec_fn: Any = None,
    until: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `vae-serve` process on 127.0.0.1 (CPU, no reload polling); yields (base URL, process) once
    ready (or once `until(url)` holds), and ends the process (SIGTERM, then kill) afterwards."""
    port = free_port()
    full_env = {
        **os.environ, "VAE_MODELS_DIR": str(models_dir), "VAE_PROVIDER": "cpu", "VAE_PORT": str(port),
        "VAE_HOST": "127.0.0.1", "VAE_RELOAD_INTERVAL_S": "0", "VAE_DRAIN_S": "0",
        "VAE_INTRA_OP_THREADS": "1", "VAE_WORKERS": "1",  # one process unless a test asks for more
        **(env or {}),
    }  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.server.cli"], env=full_env, stdout=log_file,
            stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=preexec_fn,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not (wait_until_ready(url, 60, proc) if until is None else _wait_for(until, url, 60, proc)):
            raise RuntimeError(f"vae-serve did not become ready:\n{log_path.read_text()[-3000:]}")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
