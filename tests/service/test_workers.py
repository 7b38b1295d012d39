"""Worker processes: the default plan from the hardware, and a real multi-process `vae-serve` on 127.0.0.1
whose metrics add up across workers, which reloads on SIGHUP to the parent and drains on SIGTERM."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from service.server.workers import Plan, cgroup_cpu_quota, choose
from tests.service.serving import committed_model, vae_serve

pytestmark = pytest.mark.timeout(120)


def test_cpu_host_runs_one_single_threaded_worker_per_core():
    plan = choose(None, "auto", None, cores=2, gpus=0)
    assert (plan.workers, plan.intra_op_threads, plan.device) == (2, 1, "cpu")
    assert "2 usable core(s)" in plan.reason
    many = choose(None, "cpu", None, cores=8, gpus=2)  # cpu asked for: the GPUs do not count
    assert (many.workers, many.intra_op_threads, many.device) == (8, 1, "cpu")


def test_gpu_host_runs_one_worker_per_gpu():
    plan = choose(None, "auto", None, cores=16, gpus=4)
    assert (plan.workers, plan.intra_op_threads, plan.device) == (4, 4, "cuda")
    assert "one worker process per GPU" in plan.reason


def test_flags_override_the_choice():
    assert choose(3, "cpu", None, cores=6, gpus=0) == Plan(
        3, 2, "cpu", "--workers 3 given; 2 onnxruntime thread(s) each"
    )
    assert choose(None, "cpu", 2, cores=8, gpus=0).workers == 4  # VAE_INTRA_OP_THREADS=2 on 8 cores
    assert choose(None, "cpu", 0, cores=8, gpus=0).workers == 1  # onnxruntime's default uses every core


def _all_started(log: Path, workers: int = 2):
    """vae_serve's `until`: every worker has finished startup (models loaded), not only the first."""
    return lambda url: log.read_text().count("Application startup complete") >= workers


def _decode_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'vae_http_requests_total\{method="POST",route="/v1/decode",status="200"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_metrics_are_summed_across_workers_and_sighup_reaches_every_worker(tmp_path: Path):
    models = committed_model(tmp_path)
    env = {"VAE_WORKERS": "2", "VAE_INTRA_OP_THREADS": "1"}
    log = tmp_path / "serve.log"
    with vae_serve(models, log, env=env, until=_all_started(log)) as (url, proc):
        n = 10
        for i in range(n):  # each on its own connection, so both workers get some
            r = httpx.post(f"{url}/v1/decode", json={"latents": [[0.1 * i, -0.2]]}, timeout=30)
            assert r.status_code == 200
        counts = {_decode_count(url) for _ in range(6)}  # whichever worker answers the scrape
        assert counts == {float(n)}
        serving = httpx.get(f"{url}/v1/models", timeout=10).json()["serving"]
        assert (serving["workers"], serving["intra_op_threads"], serving["device"]) == (2, 1, "cpu")
        assert serving["reason"].startswith("--workers 2 given") and serving["pid"] != proc.pid

        # A new version appears; SIGHUP to the parent only: every worker must load it.
        shutil.copytree(models / "mnist-2d" / "1", models / "mnist-2d" / "2")
        manifest = models / "mnist-2d" / "2" / "model.json"
        manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 2'))
        proc.send_signal(signal.SIGHUP)
        deadline, streak = time.monotonic() + 60, 0
        while streak < 8 and time.monotonic() < deadline:  # 8 answers in a row on fresh connections
            versions = httpx.get(f"{url}/readyz", timeout=10).json()["versions"]
            streak = streak + 1 if versions.get("mnist-2d") == 2 else 0
            time.sleep(0.05)
        assert streak >= 8, (tmp_path / "serve.log").read_text()[-3000:]
        log = (tmp_path / "serve.log").read_text()
        assert "SIGHUP: forwarded to 2 worker(s)" in log
        assert log.count("swapped in") == 2  # once per worker
        assert "serving plan: --workers 2 given" in log


def test_sigterm_to_the_parent_drains_every_worker_and_exits_0(tmp_path: Path):
    models = committed_model(tmp_path)
    env = {"VAE_WORKERS": "2", "VAE_INTRA_OP_THREADS": "1", "VAE_DRAIN_S": "2"}
    log = tmp_path / "serve.log"
    with vae_serve(models, log, env=env, until=_all_started(log)) as (url, proc):
        with httpx.Client(timeout=30) as client:  # one kept-alive connection, held through the drain
            assert client.post(f"{url}/v1/decode", json={"latents": [[0.0, 0.0]]}).status_code == 200
            proc.send_signal(signal.SIGTERM)
            # During the drain: readiness is off, requests are still answered.
            deadline = time.monotonic() + 10
            while client.get(f"{url}/readyz").status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.get(f"{url}/readyz").status_code == 503
            r = client.post(f"{url}/v1/decode", json={"latents": [[0.5, 0.5]] * 64})
            assert r.status_code == 200 and len(r.json()["images"]) == 64
        assert proc.wait(30) == 0
    log = (tmp_path / "serve.log").read_text()
    assert log.count("SIGTERM: /readyz now answers 503") == 2  # both workers drained
    shared = re.search(r"metrics of all workers in (\S+)", log)
    assert shared and not Path(shared.group(1)).exists()  # the CLI removed its metrics directory


def test_the_plan_reaches_every_worker_through_the_environment():
    plan = choose(None, "cpu", None, cores=2, gpus=0)
    env = plan.environment()
    assert env["VAE_INTRA_OP_THREADS"] == "1"
    assert Plan(**json.loads(env["VAE_SERVING_PLAN"])) == plan


def test_a_container_cpu_limit_caps_the_cores(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")  # no limit
    assert cgroup_cpu_quota(v1) is None
