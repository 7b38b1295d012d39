"""Process-level checks: no torch in the service, the CLI, and `vae-serve` answering on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving import free_port, wait_until_ready

from service.cli import parse_args
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_service_never_imports_torch():
    code = (
        "import sys, service.main, service.client, service.cli\n"
        "from service.config import Settings\n"
        "service.main.create_app(Settings(models_dir='nowhere'))\n"
        "bad = [m for m in ('torch', 'training') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("VAE_MODELS", "a, b")
    monkeypatch.setenv("VAE_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("VAE_CORS_ORIGINS", '["https://x.example"]')
    monkeypatch.setenv("VAE_LOG_LEVEL", "WARNING")
    s = Settings()
    assert s.models == ["a", "b"] and s.max_batch_size == 32 and s.cors_origins == ["https://x.example"]
    assert s.log_level == "warning" and s.api_keys is None
    for field in Settings.model_fields.values():
        assert field.description, field  # every setting documented
    with pytest.raises(ValueError, match="max_queue"):
        Settings(max_queue=10)


def test_cli_flags():
    args = parse_args(["--port", "9001", "--models-dir", "/m", "--workers", "2", "--provider", "cpu"])
    assert (args.port, args.models_dir, args.workers, args.provider) == (9001, "/m", 2, "cpu")
    assert parse_args([]).host is None  # unset flags leave VAE_* / defaults in charge


def test_vae_serve_starts_and_answers(models_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "VAE_LOG_JSON": "true", "VAE_MAX_BATCH_SIZE": "16"}
    serve = str(Path(sys.executable).parent / "vae-serve")
    cmd = [serve, "--port", str(port), "--models-dir", str(models_dir), "--provider", "cpu"]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        if not wait_until_ready(url, 60, proc):
            log.seek(0)
            pytest.fail(f"vae-serve did not become ready:\n{log.read()}")
        r = httpx.post(f"{url}/v1/sample", json={"n": 1, "seed": 1}, headers={"x-request-id": "cli-test"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "cli-test"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log.seek(0)
    lines = log.read()
    assert '"request_id":"cli-test"' in lines  # JSON logs carry the request id
    assert "model tiny v1 loaded" in lines
