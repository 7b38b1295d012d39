"""Server subprocesses for the benchmark: our service, the naive app; each on loopback in its own group.

Each server logs to a file (a full pipe would stall it) and is stopped with SIGTERM to its process group, then
SIGKILL. CPU and RSS are read from /proc for the server and every descendant (worker processes included).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from bench.peers import Peer
from bench.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def cli_module(source: Path) -> str:
    """`vae-serve`'s module in that source tree (it moved into service/server/), so an older checkout can be
    measured beside this one."""
    return "service.server.cli" if (source / "service" / "server" / "cli.py").is_file() else "service.cli"


@dataclass
class Server:
    """A server subprocess in its own process group, on loopback, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    ready_path: str = "/readyz"
    paused: bool = False
    freezable: bool = False  # it burns CPU while idle: frozen while other targets are measured
    config: str = ""  # how it is configured, in words, for the report
    cwd: Path = ROOT  # another checkout's tree to run from (put it on PYTHONPATH in `env` too)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 180.0) -> None:
        self.launch()
        self.wait_ready(ready_timeout_s)

    def launch(self) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall the server
            self.proc = subprocess.Popen(
                argv, cwd=self.cwd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, ready_timeout_s: float = 180.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + ready_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                r = httpx.get(self.url + self.ready_path, timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.25)
        raise RuntimeError(
            f"{self.name} not ready after {ready_timeout_s:.0f}s (last: {last}); see {self.log_path}"
        )

    def idle_cores(self, seconds: float = 1.0) -> float:
        """Cores the server uses while nobody talks to it."""
        before = self.cpu_seconds()
        time.sleep(seconds)
        return (self.cpu_seconds() - before) / seconds

    def pause(self) -> None:
        """SIGSTOP the whole process group: a server waiting for its turn uses no CPU at all (LitServe's
        workers poll their queues and idle at ~0.2 of a core, which the target being measured would lose)."""
        if self.proc is not None and self.proc.poll() is None and not self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def stop(self) -> None:
        self.resume()  # a stopped process would hold its SIGTERM until continued
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its descendants so far, from /proc/<pid>/stat."""
        assert self.proc is not None
        return sum(_cpu_ticks(pid) for pid in _descendants(self.proc.pid)) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, max_s: float = 60.0, interval_s: float = 0.25, busy: float = 0.3) -> float:
        """Wait until the server uses under `busy` of a core (it may still run abandoned requests). 0.3: some
        servers never go quieter than ~0.2 of a core (LitServe's workers poll their queues)."""
        started = time.monotonic()
        last, quiet = self.cpu_seconds(), 0
        while quiet < 2 and time.monotonic() - started < max_s:
            time.sleep(interval_s)
            now = self.cpu_seconds()
            quiet = quiet + 1 if now - last < busy * interval_s else 0
            last = now
        return round(time.monotonic() - started, 2)

    def rss_mb(self) -> float:
        """Resident memory of the server and its descendants (uvicorn workers), from /proc/<pid>/status."""
        assert self.proc is not None
        return sum(_rss_kb(pid) for pid in _descendants(self.proc.pid)) / 1024.0


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 in proc(5)


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError):
                stack.extend(int(c) for c in children.read_text().split())
    return found


def ours_server(args: argparse.Namespace, models_dir: Path, model: str, out: Path, extra_env: dict) -> Server:
    script = Path(sys.executable).with_name("vae-serve")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "service.server.cli"]
    if getattr(args, "ours_cmd", None):
        exe = shlex.split(args.ours_cmd)
    workers = getattr(args, "workers", None)
    host = ["--host", "127.0.0.1", "--port", "{port}", "--models-dir", str(models_dir)]
    argv = [*exe, *host, *(["--workers", str(workers)] if workers else [])]
    # gRPC off: these benches speak HTTP, and a gRPC port is not shared between servers.
    env = {"VAE_DEFAULT_MODEL": model, "VAE_PROVIDER": args.provider, "VAE_GRPC_PORT": "0", **extra_env,
           **dict(args.env)}  # fmt: skip
    return Server("ours", argv, env, out / "ours.log")


def naive_server(args: argparse.Namespace, model_path: Path, out: Path) -> Server:
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.naive_app:app", "--host", "127.0.0.1",
        "--port", "{port}", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {"BENCH_NAIVE_MODEL_DIR": str(model_path), "BENCH_NAIVE_PROVIDER": args.provider}
    server = Server("naive", argv, env, out / "naive.log")
    server.config = "FastAPI sync endpoints under uvicorn, 1 worker, one run() per request, default options"
    return server


def floor_server(mode: str, model_path: Path, out: Path) -> Server:
    """bench/floor_app.py in `mode` (http or work): no framework, the floor under the CPU per request."""
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.floor_app:app", "--host", "127.0.0.1",
        "--port", "{port}", "--no-access-log", "--log-level", "warning", "--http", "httptools",
        "--loop", "uvloop",
    ]  # fmt: skip
    env = {"BENCH_FLOOR_MODE": mode, "BENCH_FLOOR_MODEL_DIR": str(model_path)}
    server = Server(f"floor-{mode}", argv, env, out / f"floor-{mode}.log")
    server.config = f"a bare ASGI callable under uvicorn (httptools, uvloop), 1 worker, mode {mode}"
    return server


def describe_ours(listing: dict | None, args: argparse.Namespace) -> str:
    """How the service ran: its own account of the workers and threads (on /v1/models), else the flags."""
    chosen = (listing or {}).get("serving") or {}
    if chosen:
        return f"vae-serve: {chosen.get('reason') or chosen}"
    workers = getattr(args, "workers", None)
    return f"vae-serve, {'--workers ' + str(workers) if workers else 'defaults'}"


def peer_server(peer: Peer, python: Path, model_path: Path, workers: int, out: Path) -> Server:
    """A peer from its own venv; its apps import bench/peers/common.py by path, MLServer its runtime too."""
    work = out / f"{peer.name}-work"
    port = free_port()
    argv = peer.argv(python, port, model_path.resolve(), workers, work)
    env = {"PYTHONPATH": str(ROOT / "bench" / "peers"), "PYTHONUNBUFFERED": "1"}
    server = Server(peer.name, argv, env, out / f"{peer.name}.log", port=port, ready_path=peer.ready_path)
    return replace(server, config=f"{peer.package} {peer.version()}: {peer.config(workers)}")
