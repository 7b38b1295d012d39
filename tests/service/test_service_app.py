"""Process-level checks: no torch in the service, the CLI, and `vae-serve` answering on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving import free_port, wait_until_ready

from service.config import Settings
from service.server.cli import parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_the_service_never_imports_torch():
    code = (
        "import sys, service.main, service.client, service.server.cli\n"
        "from service.config import Settings\n"
        "service.main.create_app(Settings(models_dir='nowhere'))\n"
        "bad = [m for m in ('torch', 'training') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# Run in a fresh interpreter with torch made unimportable: every service module, the shared test helpers,
# every service and web test module, then the fixture models built and served. The training tests need torch
# in the same pytest session, so the guard cannot live in a conftest.
NO_TORCH = """
import importlib.abc, importlib.util, pkgutil, sys, tempfile
from pathlib import Path

asked = []

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            asked.append(name)
            raise ImportError(f"{name} is blocked here: service and web tests must not need torch")
        return None

sys.meta_path.insert(0, NoTorch())
root = Path.cwd()
sys.path[:0] = [str(root), str(root / "tests"), str(root / "tests" / "service")]
import numpy as np
import service

for info in pkgutil.walk_packages(service.__path__, "service."):
    importlib.import_module(info.name)
files = [root / "tests" / "conftest.py", *sorted((root / "tests" / "service").glob("*.py")),
         *sorted((root / "tests" / "web").glob("*.py"))]
for i, path in enumerate(files):
    spec = importlib.util.spec_from_file_location(f"checked_{i}_{path.stem}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

from mnist_models import write_mnist_models
from serving import serve

images = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
models = write_mnist_models(Path(tempfile.mkdtemp()), images[:48], images[48:], source="random bytes")
with serve(models) as client:
    assert client.post("/v1/reconstruct", json={"images": []}).status_code == 422
    assert client.post("/v1/sample", json={"n": 2, "seed": 1}).status_code == 200
assert not asked and "torch" not in sys.modules, asked
print(len(files), "test modules")
"""


def test_service_and_web_tests_and_their_fixture_models_never_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH], cwd=ROOT, timeout=120, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test modules" in result.stdout


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
