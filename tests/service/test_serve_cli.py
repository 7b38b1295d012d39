"""vae-serve gives uvicorn a worker health check long enough for a worker still importing on a busy host."""

from __future__ import annotations

import os

import pytest

from service.server import cli


def test_several_workers_get_a_generous_health_check(monkeypatch, tmp_path):
    seen = {}

    def fake_run_workers(config):
        seen["config"] = config
        return 0

    monkeypatch.setattr("service.server.workers.run_workers", fake_run_workers)
    monkeypatch.setattr("service.server.connections.raise_fd_limit", lambda n: None)
    monkeypatch.setattr("service.logs.configure_logging", lambda *a: None)
    for name in ("VAE_WORKERS", "VAE_INTRA_OP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    saved = dict(os.environ)  # vae-serve passes its settings to the workers through the environment
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--workers", "2", "--port", "0", "--models-dir", str(tmp_path)])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert exit_info.value.code == 0
    config = seen["config"]
    assert config.workers == 2 and config.timeout_worker_healthcheck == cli.WORKER_HEALTHCHECK_S >= 30
