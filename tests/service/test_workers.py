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

from service.server import workers
from service.server.workers import (
    Plan,
    cgroup_cpu_quota,
    choose,
    gpu_memory_mb,
    usable_cores,
    worker_environment,
)
from tests.service.serving import committed_model, vae_serve

pytestmark = pytest.mark.timeout(120)


def test_cpu_host_runs_one_single_threaded_worker_per_core():
    plan = choose(None, "auto", None, cores=2, gpus=0)
    assert (plan.workers, plan.intra_op_threads, plan.device) == (2, 1, "cpu")
    assert "2 usable core(s)" in plan.reason
    many = choose(None, "cpu", None, cores=8, gpus=2)  # cpu asked for: the GPUs do not count
    assert (many.workers, many.intra_op_threads, many.device) == (8, 1, "cpu")


H100_MB = 81559  # what nvidia-smi reports for an H100 80GB


def test_gpu_host_runs_a_worker_per_usable_core_spread_over_the_gpus():
    plan = choose(None, "auto", None, cores=16, gpus=1, gpu_mb=H100_MB, cuda_usable=True)
    assert (plan.workers, plan.intra_op_threads, plan.device, plan.gpus) == (16, 1, "cuda", 1)
    assert plan.gpu_mem_limit_mb == int(H100_MB * 0.8) // 16 == 4077  # the workers' share of 80% of it
    assert (
        "16 worker process(es) per GPU" in plan.reason
        and "capped at 4077 MiB (its share of the card)" in plan.reason
    )
    four = choose(None, "cuda", None, cores=32, gpus=4, gpu_mb=H100_MB)
    assert (four.workers, four.gpus, four.gpu_mem_limit_mb) == (32, 4, int(H100_MB * 0.8) // 8)
    assert "8 worker process(es) per GPU" in four.reason and "32 in all" in four.reason
    few = choose(None, "cuda", None, cores=2, gpus=4, gpu_mb=H100_MB)  # fewer cores than GPUs: one each
    assert (few.workers, few.gpus) == (4, 4)


def test_a_small_card_takes_fewer_workers_and_an_unknown_one_no_bound(monkeypatch: pytest.MonkeyPatch):
    small = choose(None, "cuda", None, cores=16, gpus=1, gpu_mb=4096)
    assert small.workers == 3 and small.gpu_mem_limit_mb == int(4096 * 0.8) // 3  # >= 1 GiB each
    assert "capped at 3 by the card's 4096 MiB" in small.reason
    monkeypatch.setattr(workers, "gpu_memory_mb", lambda: None)  # nvidia-smi says nothing
    unknown = choose(None, "cuda", None, cores=8, gpus=1)
    assert (unknown.workers, unknown.gpu_mem_limit_mb) == (8, 0)  # no cap on the count, no bound
    assert "no GPU memory bound" in unknown.reason


def test_a_given_gpu_memory_bound_or_worker_count_wins():
    given = choose(None, "cuda", None, cores=16, gpus=1, gpu_mb=H100_MB, gpu_mem_limit_mb=2000)
    assert (given.workers, given.gpu_mem_limit_mb) == (16, 2000)
    flags = choose(6, "cuda", None, cores=16, gpus=2, gpu_mb=H100_MB)
    assert (flags.workers, flags.device, flags.gpus, flags.intra_op_threads) == (6, "cuda", 2, 1)
    assert flags.gpu_mem_limit_mb == int(H100_MB * 0.8) // 3  # three workers on each card
    assert flags.reason.startswith("--workers 6 given: spread over 2 GPU(s)")
    assert choose(None, "cuda", 2, cores=16, gpus=1, gpu_mb=H100_MB).intra_op_threads == 2


def test_gpus_without_a_usable_cuda_provider_serve_from_the_cpu_plan():
    plan = choose(None, "auto", None, cores=4, gpus=2, cuda_usable=False)
    assert (plan.workers, plan.device, plan.gpus, plan.gpu_mem_limit_mb) == (4, "cpu", 0, 0)
    assert "2 GPU(s) seen but onnxruntime's CUDA provider cannot run here" in plan.reason


def test_each_worker_is_pinned_to_one_gpu_in_its_environment():
    plan = choose(None, "cuda", None, cores=4, gpus=2, gpu_mb=H100_MB)
    pinned = [worker_environment(plan, slot, None) for slot in range(plan.workers)]
    assert pinned == [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in ("0", "1", "0", "1")]
    # Within the devices the operator made visible (CUDA renumbers them from 0 in each worker).
    within = [worker_environment(plan, slot, "4,6")["CUDA_VISIBLE_DEVICES"] for slot in range(4)]
    assert within == ["4", "6", "4", "6"]
    uuids = worker_environment(plan, 1, "GPU-aaa,GPU-bbb,-1,GPU-ccc")  # CUDA stops at an invalid entry
    assert uuids == {"CUDA_VISIBLE_DEVICES": "GPU-bbb"}
    assert worker_environment(choose(None, "cpu", None, cores=4, gpus=2), 1, None) == {}
    assert worker_environment(choose(1, "cuda", None, cores=4, gpus=1, gpu_mb=H100_MB), 0, None) == {}
    env = plan.environment()
    assert env["VAE_GPU_MEM_LIMIT_MB"] == str(plan.gpu_mem_limit_mb) and env["VAE_INTRA_OP_THREADS"] == "1"


def test_a_worker_pins_itself_before_building_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """create_worker_app in a worker of a 2-GPU plan: the first free slot, its GPU in CUDA_VISIBLE_DEVICES,
    and /v1/models's `serving` saying so; a second worker gets the next slot and the other GPU."""
    plan = choose(None, "cuda", None, cores=4, gpus=2, gpu_mb=H100_MB)
    for key, value in {**plan.environment(), workers.MULTIPROC_ENV: str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("VAE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("VAE_PROVIDER", "cpu")  # the app is built, never started: no session is created
    held = []
    try:
        served = []
        for _ in range(2):
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            app = workers.create_worker_app()
            held.append(workers._slot_lock)
            served.append(app.state.serving)
        assert [(s["slot"], s["cuda_visible_devices"]) for s in served] == [(0, "0"), (1, "1")]
        assert served[0]["gpu_mem_limit_mb"] == plan.gpu_mem_limit_mb and served[0]["device"] == "cuda"
    finally:
        for handle in held:
            handle.close()
        workers._slot_lock = None


def test_gpu_memory_is_read_from_nvidia_smi_for_the_visible_cards(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '81559\\n40960\\n81559\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_memory_mb() == 40960  # the smallest card
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert gpu_memory_mb() == 81559
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert gpu_memory_mb() is None


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


def test_the_plan_counts_a_container_cpu_limit_not_the_node_cores(tmp_path: Path):
    """A 64-core node, a container limited to 6 CPUs (cgroup v2), or 2.5 (v1, rounded up), one GPU."""
    (tmp_path / "cpu.max").write_text("600000 100000\n")
    cores = usable_cores(tmp_path, affinity=64)
    assert cores == 6
    plan = choose(None, "cuda", None, cores=cores, gpus=1, gpu_mb=H100_MB)
    assert plan.workers == 6 and "6 usable core(s)" in plan.reason
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("250000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cores(v1, affinity=64) == 3
    assert usable_cores(tmp_path / "no-cgroup", affinity=64) == 64
    assert usable_cores(v1, affinity=2) == 2  # the affinity mask is the smaller
