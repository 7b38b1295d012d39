"""Peer servers users would pick instead of ours: KServe's ModelServer, MLServer and LitServe.

Each peer runs from its own virtual environment under `PEERS_ROOT/<name>` (never the project's .venv),
created on first use from the exact pins in `bench/peers/<name>.txt`, and serves a model folder's decoder.onnx
doing the work of `bench/peers/common.py` per request (latents in, one base64 PNG per latent out) behind its
own protocol. Config: its documented batching and the worker count its docs recommend (one process per core).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.ports import free_port

HERE = Path(__file__).resolve().parent
PEERS_ROOT = Path(os.environ.get("BENCH_PEERS_DIR", "/tmp/vae-peers"))


@dataclass(frozen=True)
class Peer:
    name: str
    package: str  # the distribution whose pinned version the report shows
    ready_path: str
    # (venv python, port, model folder, workers, work folder) -> argv
    argv: Callable[[Path, int, Path, int, Path], list[str]]
    path: str  # the route one decode request goes to
    body: Callable[[list[float]], dict]  # one latent -> the JSON body
    config: Callable[[int], str]  # workers -> how it is configured, in words

    def requirements(self) -> Path:
        return HERE / f"{self.name}.txt"

    def version(self) -> str:
        for line in self.requirements().read_text().splitlines():
            if line.startswith(self.package + "=="):
                return line.split("==", 1)[1].strip()
        return "?"


def _threads(workers: int) -> int:
    """onnxruntime intra-op threads per worker so that workers x threads = the usable cores."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


def _kserve_argv(python: Path, port: int, model: Path, workers: int, work: Path) -> list[str]:
    return [
        str(python), str(HERE / "kserve_app.py"), "--model_dir", str(model), "--http_port", str(port),
        "--workers", str(workers), "--threads", str(_threads(workers)), "--enable_latency_logging", "false",
    ]  # fmt: skip


MLSERVER_BATCH, MLSERVER_BATCH_TIME_S = 64, 0.001
LITSERVE_BATCH, LITSERVE_BATCH_TIMEOUT_S = 64, 0.001


def _mlserver_argv(python: Path, port: int, model: Path, workers: int, work: Path) -> list[str]:
    repo = work / "mlserver"
    (repo / "decoder").mkdir(parents=True, exist_ok=True)
    settings = {
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
        "parallel_workers": workers, "debug": False, "metrics_endpoint": None,
    }  # fmt: skip
    model_settings = {
        "name": "decoder",
        "implementation": "mlserver_runtime.DecoderRuntime",
        "max_batch_size": MLSERVER_BATCH,
        "max_batch_time": MLSERVER_BATCH_TIME_S,
        "parameters": {"uri": str(model), "extra": {"threads": _threads(workers)}},
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    (repo / "decoder" / "model-settings.json").write_text(json.dumps(model_settings))
    return [str(python), str(python.parent / "mlserver"), "start", str(repo)]  # its console script


def _litserve_argv(python: Path, port: int, model: Path, workers: int, work: Path) -> list[str]:
    return [
        str(python), str(HERE / "litserve_app.py"), "--model-dir", str(model), "--port", str(port),
        "--workers", str(workers), "--threads", str(_threads(workers)), "--max-batch-size",
        str(LITSERVE_BATCH), "--batch-timeout", str(LITSERVE_BATCH_TIMEOUT_S),
    ]  # fmt: skip


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "kserve",
            "kserve",
            "/v2/health/ready",
            _kserve_argv,
            "/v1/models/decoder:predict",
            lambda z: {"instances": [z]},
            lambda w: (
                f"ModelServer, {w} workers x {_threads(w)} onnxruntime threads, V1 protocol, no "
                "batching (KServe batches in its agent sidecar)"
            ),
        ),
        Peer(
            "mlserver",
            "mlserver",
            "/v2/health/ready",
            _mlserver_argv,
            "/v2/models/decoder/infer",
            lambda z: {"inputs": [{"name": "z", "shape": [1, len(z)], "datatype": "FP32", "data": z}]},
            lambda w: (
                f"{w} parallel workers x {_threads(w)} onnxruntime threads, V2 protocol, adaptive "
                f"batching max_batch_size {MLSERVER_BATCH}, "
                f"max_batch_time {MLSERVER_BATCH_TIME_S * 1000:g} ms"
            ),
        ),
        Peer(
            "litserve",
            "litserve",
            "/health",
            _litserve_argv,
            "/predict",
            lambda z: {"latent": z},
            lambda w: (
                f"workers_per_device {w} x {_threads(w)} onnxruntime threads, max_batch_size "
                f"{LITSERVE_BATCH}, batch_timeout {LITSERVE_BATCH_TIMEOUT_S * 1000:g} ms"
            ),
        ),
    )
}


def ensure_venv(peer: Peer, timeout_s: float = 900.0) -> Path:
    """The peer's python, creating its venv and installing its pins first when they changed (or it is new)."""
    venv = PEERS_ROOT / peer.name
    python = venv / "bin" / "python"
    pins = peer.requirements().read_bytes()
    stamp, want = venv / ".pins-sha256", hashlib.sha256(pins).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    print(f"[bench] creating {venv} from {peer.requirements().name} (once)", flush=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
         str(peer.requirements())],
        check=True, timeout=timeout_s,
    )  # fmt: skip
    stamp.write_text(want)
    return python
