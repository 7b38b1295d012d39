"""How many worker processes `vae-serve` runs, with how many onnxruntime threads each, and their supervisor.

The default uses the machine it is on:

- CPU host: one worker process per usable core, each with one onnxruntime intra-op thread. A request's HTTP,
  JSON and PNG work runs in Python, one core per process, so only processes put every core to work on it, and
  a small decode gains next to nothing from a second thread. Processes x threads were chosen by measuring
  every configuration alternately (docs/benchmarks.md has the figures).
- GPU host: one worker process per usable core as well, spread evenly over the GPUs, each pinned to its GPU
  (CUDA_VISIBLE_DEVICES in its environment, before it imports anything that could touch CUDA; its sessions are
  created after the fork, when it loads its models) with one onnxruntime thread. The GPU does a batch's
  arithmetic in microseconds; what limits a server is the Python work around each request (HTTP, JSON, base64,
  PNG), so one process per GPU would leave the GPU and all other cores idle. This is the shape of the servers
  that feed GPUs well: many CPU front ends per device (Triton's and TorchServe's native front ends, LitServe's
  API-server processes, MLServer's parallel workers). Each process holds its own CUDA context and arenas, so
  the card is shared by a memory bound: no CUDA arena of a worker may grow past its share of the card (80% of
  the smallest visible card's memory, read from `nvidia-smi`, divided by the workers on a card:
  VAE_GPU_MEM_LIMIT_MB), with at least 1 GiB per worker (fewer workers on a small card), and cuDNN's workspace
  is sized per convolution (service.inference.runtime.cuda_options).

`--workers N` (VAE_WORKERS), `VAE_INTRA_OP_THREADS` and `VAE_GPU_MEM_LIMIT_MB` override the choice. The plan
is logged at startup and shown on `/v1/models` (`serving`), with the reason. The machine is read without
touching CUDA, so the parent process never holds a CUDA context a worker would inherit: usable cores from the
affinity mask and the cgroup CPU quota (a container's CPU limit), GPUs from CUDA_VISIBLE_DEVICES or the
/dev/nvidiaN device files, card memory from `nvidia-smi`, and whether the CUDA provider can run from
service.inference.cuda (which only loads libraries).

With several workers, metrics are collected across them (prometheus_client's multiprocess mode, in a temporary
directory the CLI creates and removes), SIGHUP sent to the parent is forwarded to every worker (each reloads
its models), and SIGTERM to the parent is sent on to every worker, which drains as a single process does.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

PLAN_ENV = "VAE_SERVING_PLAN"  # JSON of the Plan, from the CLI to every worker
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class Plan:
    workers: int
    intra_op_threads: int  # 0: onnxruntime's default (one per physical core)
    device: Literal["cpu", "cuda"]
    reason: str
    gpus: int = 0  # GPUs the workers are spread over (cuda), each worker pinned to one
    gpu_mem_limit_mb: int = 0  # each worker's share of its card, the cap on its CUDA arenas; 0: none

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    def environment(self) -> dict[str, str]:
        """What every worker must read from its environment: its thread count, memory bound and the plan."""
        env = {"VAE_INTRA_OP_THREADS": str(self.intra_op_threads), PLAN_ENV: self.to_env()}
        if self.gpu_mem_limit_mb:
            env["VAE_GPU_MEM_LIMIT_MB"] = str(self.gpu_mem_limit_mb)
        return env

    @classmethod
    def from_env(cls) -> Plan | None:
        text = os.environ.get(PLAN_ENV)
        if not text:
            return None
        with contextlib.suppress(ValueError, TypeError):
            return cls(**json.loads(text))
        return None


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup"), affinity: int | None = None) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (a container's CPU
    limit), which the affinity mask does not show: 2 CPUs of quota on a 64-core node mean 2 workers.
    Arguments are for tests (defaults: this process and its cgroup)."""
    if affinity is not None:
        cores = affinity
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def count_gpus() -> int:
    """NVIDIA GPUs this process may use, without loading CUDA: CUDA_VISIBLE_DEVICES, else /dev/nvidiaN."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len(visible_devices(visible))
    return len([p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)])


def visible_devices(text: str) -> list[str]:
    """The devices a CUDA_VISIBLE_DEVICES value names, up to the first invalid one (CUDA ignores the rest)."""
    devices = []
    for part in (d.strip() for d in text.split(",")):
        if not part or part.startswith("-"):
            break
        devices.append(part)
    return devices


def gpu_memory_mb() -> int | None:
    """Memory of the smallest visible card in MiB, from `nvidia-smi` (no CUDA in this process); None when
    it cannot say."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    sizes = [int(line) for line in out.split() if line.strip().isdigit()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # indices only; UUIDs or MIG names: the smallest card of all stands for them
        picked = [int(d) for d in visible_devices(visible) if d.isdigit()]
        if picked and all(i < len(sizes) for i in picked):
            sizes = [sizes[i] for i in picked]
    return min(sizes) if sizes else None


# Each worker's share of a card: at least this much (a CUDA context alone takes ~0.5 GB), and 80% of the card
# in all, leaving room for the contexts and for cuDNN's workspaces, which onnxruntime's arena cap misses.
MIN_GPU_MB_PER_WORKER = 1024
GPU_MEMORY_SHARE = 0.8


def choose(
    workers: int | None,
    provider: str,
    intra_op_threads: int | None,
    cores: int | None = None,
    gpus: int | None = None,
    gpu_mb: int | None = None,
    cuda_usable: bool | None = None,
    gpu_mem_limit_mb: int | None = None,
) -> Plan:
    """The plan for these flags on this machine; `None` means "not given": choose from the hardware.

    `gpu_mb` is the card's memory (None: unknown, then no memory bound is chosen), `cuda_usable` whether
    onnxruntime's CUDA provider can run here ('auto' serves on CPU otherwise), `gpu_mem_limit_mb` a given
    per-worker bound (VAE_GPU_MEM_LIMIT_MB). Tests pass them; by default they are read from the machine.
    """
    cores = cores or usable_cores()
    gpus = count_gpus() if gpus is None else gpus
    if provider == "auto" and gpus > 0 and cuda_usable is None:
        from service.inference import cuda

        cuda_usable = cuda.status().usable
    on_gpu = gpus > 0 and (provider == "cuda" or (provider == "auto" and bool(cuda_usable)))
    if on_gpu and gpu_mb is None and gpu_mem_limit_mb is None:
        gpu_mb = gpu_memory_mb()
    if workers is not None:
        if on_gpu:
            per_gpu = math.ceil(workers / gpus)
            limit = _share(gpu_mb, per_gpu, gpu_mem_limit_mb)
            threads = intra_op_threads if intra_op_threads is not None else 1
            why = (
                f"--workers {workers} given: spread over {gpus} GPU(s), each pinned to one; {threads} "
                f"onnxruntime thread(s) each{_bound(limit)}"
            )
            return Plan(workers, threads, "cuda", why, gpus, limit)
        threads = intra_op_threads if intra_op_threads is not None else max(1, cores // workers)
        why = f"--workers {workers} given; {threads or 'the default number of'} onnxruntime thread(s) each"
        return Plan(workers, threads, "cpu", why)
    if on_gpu:
        per_gpu = max(1, cores // gpus)
        capped = ""
        if gpu_mb is not None and gpu_mem_limit_mb is None:
            fit = max(1, int(gpu_mb * GPU_MEMORY_SHARE) // MIN_GPU_MB_PER_WORKER)
            if fit < per_gpu:
                per_gpu, capped = fit, f" (capped at {fit} by the card's {gpu_mb} MiB)"
        limit = _share(gpu_mb, per_gpu, gpu_mem_limit_mb)
        threads = intra_op_threads if intra_op_threads is not None else 1
        why = (
            f"GPU host with {gpus} GPU(s) and {cores} usable core(s): {per_gpu} worker process(es) per GPU"
            f"{capped}, {per_gpu * gpus} in all, each pinned to its GPU, {threads} onnxruntime thread(s) "
            f"each{_bound(limit)} (a request's HTTP, JSON and PNG work runs in Python, one core per process: "
            "one process cannot keep a GPU busy)"
        )
        return Plan(per_gpu * gpus, threads, "cuda", why, gpus, limit)
    if intra_op_threads is None:
        why = (
            f"CPU host with {cores} usable core(s): {cores} worker process(es) x 1 onnxruntime thread (a "
            "request's HTTP, JSON and PNG work runs in Python, one core per process; a small decode gains "
            "next to nothing from a second thread)"
        )
        if gpus > 0 and provider == "auto":
            why += f"; {gpus} GPU(s) seen but onnxruntime's CUDA provider cannot run here"
        return Plan(cores, 1, "cpu", why)
    # VAE_INTRA_OP_THREADS given: fill the cores with workers of that many threads (0 is onnxruntime's own
    # default, every core for one session: then one process).
    chosen = 1 if intra_op_threads == 0 else max(1, cores // intra_op_threads)
    why = f"VAE_INTRA_OP_THREADS={intra_op_threads} given on {cores} core(s): {chosen} worker process(es)"
    return Plan(chosen, intra_op_threads, "cpu", why)


def _share(gpu_mb: int | None, per_gpu: int, given: int | None) -> int:
    """Each worker's bound on its card in MiB: the given one, else its share of 80% of the card; 0: none."""
    if given is not None:
        return given
    return int(gpu_mb * GPU_MEMORY_SHARE) // per_gpu if gpu_mb else 0


def _bound(limit_mb: int) -> str:
    return (
        f", each CUDA arena capped at {limit_mb} MiB (its share of the card)"
        if limit_mb
        else ", no GPU memory bound"
    )


def worker_environment(plan: Plan, slot: int | None, visible: str | None) -> dict[str, str]:
    """What a worker in `slot` sets in its own environment before anything loads CUDA: on a CUDA plan with
    several workers, CUDA_VISIBLE_DEVICES naming its one GPU (slot modulo the GPUs, within the devices the
    operator made visible, `visible`, if any), so that its sessions' device 0 is that GPU."""
    if plan.device != "cuda" or slot is None or plan.workers < 2:
        return {}
    devices = visible_devices(visible) if visible is not None else []
    if devices:
        return {"CUDA_VISIBLE_DEVICES": devices[slot % len(devices)]}
    return {"CUDA_VISIBLE_DEVICES": str(slot % max(1, plan.gpus))}


# --- inside each worker ------------------------------------------------------------------------------------


def create_worker_app() -> Any:
    """uvicorn's factory in every worker: pin its GPU on a CUDA plan, then the usual app (whose lifespan
    creates the sessions, in this process, after the fork)."""
    from service.main import create_app

    plan = Plan.from_env()
    slot = None
    if plan is not None and plan.device == "cuda" and plan.workers > 1:
        slot = _claim_slot(plan.workers)
        os.environ.update(worker_environment(plan, slot, os.environ.get("CUDA_VISIBLE_DEVICES")))
    app = create_app()
    # Everything imported and built so far (FastAPI, pydantic schemas, numpy, onnxruntime bindings: ~70,000
    # objects) lives as long as the process: keep it out of the collector's full passes, which otherwise
    # stall the event loop for tens of milliseconds each and show up as p99 spikes.
    gc.freeze()
    if plan is not None:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if plan.device == "cuda" else None
        app.state.service.serving = {
            **asdict(plan),
            "pid": os.getpid(),
            "slot": slot,
            "cuda_visible_devices": gpu,
        }
        where = f"slot {slot} of {plan.workers}" if slot is not None else f"one of {plan.workers}"
        if gpu is not None:
            where += f", CUDA_VISIBLE_DEVICES={gpu}"
        log.info("worker pid %d (%s): %s", os.getpid(), where, plan.reason)
    return app


_slot_lock: Any = None  # held for the life of the worker: the kernel frees it when the process dies


def _claim_slot(n: int) -> int | None:
    """The lowest free worker slot (0..n-1), by an exclusive lock on a file per slot in the shared temp dir.

    A replacement for a worker that died gets that worker's slot, and so its GPU.
    """
    global _slot_lock
    root = os.environ.get(MULTIPROC_ENV)
    if not root:
        return None
    try:
        import fcntl  # POSIX only; on Windows workers go without slots rather than failing to start
    except ImportError:
        return None
    for slot in range(n):
        handle = open(Path(root) / f"slot-{slot}.lock", "a+")  # noqa: SIM115 - kept open while the worker lives
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _slot_lock = handle
        return slot
    return None


# --- the parent ------------------------------------------------------------------------------------------


def supervisor_class() -> Any:
    """uvicorn's multiprocess supervisor, except for what our lifecycle needs from it.

    - SIGHUP: uvicorn would restart every worker; we forward the signal, and each worker reloads its models
      in place (service.lifecycle), as a single process does.
    - A worker that is gone has its live gauges removed from the shared metrics directory.
    - A worker that fails at startup (its models' failure is not that: those workers start and say 503 on
      /readyz) stops the parent with uvicorn's STARTUP_FAILURE status.
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        startup_failed = False

        def handle_hup(self) -> None:
            pids = [p.pid for p in self.processes if p.pid is not None and p.exitcode is None]
            log.info(
                "SIGHUP: forwarded to %d worker(s) %s: each looks for new model versions", len(pids), pids
            )
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            for pid in before - {p.pid for p in self.processes}:
                _mark_dead(pid)
            if any(p.exitcode == STARTUP_FAILURE for p in self.processes):
                self.startup_failed = True

        def join_all(self) -> None:
            super().join_all()
            for process in self.processes:
                if process.exitcode == STARTUP_FAILURE:
                    self.startup_failed = True
                _mark_dead(process.pid)

    return Supervisor


def _mark_dead(pid: int | None) -> None:
    if pid is None or not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)


def _claim_grpc_port() -> None:
    """Fail now, with a clear message, when another server holds the gRPC port: the workers bind it with
    SO_REUSEPORT to share it among themselves, which would also let them share it with a stranger."""
    import socket

    from service.config import Settings

    settings = Settings()
    if not settings.grpc_port:
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # no SO_REUSEPORT: a bound port refuses it
        try:
            probe.bind((settings.host.strip("[]"), settings.grpc_port))
        except OSError as exc:
            raise SystemExit(
                f"gRPC: cannot bind {settings.host}:{settings.grpc_port} (VAE_GRPC_PORT; 0 turns gRPC off; "
                f"is another server on it?): {exc.strerror}"
            ) from None


def run_workers(config: Any) -> int:
    """Run `config.workers` processes on one socket until SIGTERM/SIGINT; the exit status.

    Metrics: a fresh PROMETHEUS_MULTIPROC_DIR for this run (set before any worker starts, since
    prometheus_client picks its storage when first imported), removed when the last worker has exited.
    """
    import shutil
    import tempfile

    shared = tempfile.mkdtemp(prefix="vae-metrics-")
    os.environ[MULTIPROC_ENV] = shared
    log.info("%d workers; metrics of all workers in %s (removed at exit)", config.workers, shared)
    try:
        sock = config.bind_socket()
        _claim_grpc_port()
        supervisor = supervisor_class()(config, sockets=[sock])
        with contextlib.suppress(KeyboardInterrupt):
            supervisor.run()
        return 3 if supervisor.startup_failed else 0  # 3: uvicorn's STARTUP_FAILURE
    finally:
        shutil.rmtree(shared, ignore_errors=True)
