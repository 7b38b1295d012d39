"""Throughput benchmark: the service against the raw onnxruntime limit and a naive baseline, in one run.

    .venv/bin/python -m bench.run --out bench/results            # the full sweep (`make bench`), ~6 minutes
    .venv/bin/python -m bench.run --quick --out /tmp/bench       # a smoke run, ~1.5 minutes
    .venv/bin/python -m bench.run --soak 100000 --only-soak      # memory: server RSS before/after N requests
    .venv/bin/python -m bench.run --gpu-table --provider cuda    # items/s at batch 1, 64, 1024 on a GPU host

Steps: measure the raw in-process onnxruntime call (bench/raw.py) while no server runs; start the service
(`vae-serve`) and the naive app (bench/naive_app.py under uvicorn) on free 127.0.0.1 ports and wait for
/readyz; then for every scenario and concurrency level drive both with the same closed-loop load generator
(bench/load.py), interleaved so a noisy neighbour hurts both alike. Writes `results.json` and `results.md`
(the table docs/benchmarks.md quotes) plus the servers' logs into --out. Servers are always stopped on exit.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.load import RequestSpec, run_load_sync
from bench.raw import RawModel, measure

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY = "application/x-npy"
FALLBACK_MODELS = Path("/tmp/bench-models")
# The targets (benchmark, not tests).
TARGET_NAIVE_RATIO, TARGET_NAIVE_CONCURRENCY = 2.0, 64
TARGET_RAW_FRACTION = 0.5
TARGET_RSS_GROWTH_MB = 50.0


# --- what the scenarios send -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    latent_dim: int
    shape: tuple[int, int, int]  # (C, H, W)
    pngs: tuple[bytes, ...]  # images for /v1/encode: decoded prior draws of this very model


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    """(C, H, W) float in [0, 1] -> PNG bytes."""
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _json(payload: dict) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), {"content-type": "application/json"}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    items: int  # items per request (latents decoded, images encoded, samples drawn)
    raw: tuple[str, int]  # the in-process call it is compared with: (graph, batch)
    build: Callable[[str, ModelInfo], list[RequestSpec]]  # (target kind, model) -> request pool
    check: Callable[[httpx.Response, ModelInfo], str | None]  # None when the answer is right


def _decode1_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    rng = np.random.default_rng(1)
    specs = []
    for _ in range(64):
        body, headers = _json({"latents": rng.standard_normal((1, m.latent_dim)).round(5).tolist()})
        specs.append(RequestSpec("POST", "/v1/decode", body, {**headers, "accept": "image/png"}))
    return specs


def _decode1_check(r: httpx.Response, m: ModelInfo) -> str | None:
    if not r.content.startswith(PNG_MAGIC):
        return f"expected a PNG, got {r.headers.get('content-type')}"
    size = Image.open(io.BytesIO(r.content)).size
    return None if size == (m.shape[2], m.shape[1]) else f"PNG of size {size}"


DECODE_BATCH = 256


def _decode256_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    rng = np.random.default_rng(2)
    specs = []
    for _ in range(8):
        z = rng.standard_normal((DECODE_BATCH, m.latent_dim), dtype=np.float32)
        if kind == "naive":  # the baseline speaks JSON lists only
            body, headers = _json({"latents": z.round(5).tolist()})
        else:
            body, headers = _npy(z), {"content-type": NPY}
        specs.append(RequestSpec("POST", "/v1/decode", body, {**headers, "accept": NPY}))
    return specs


def _decode256_check(r: httpx.Response, m: ModelInfo) -> str | None:
    if r.headers.get("content-type", "").startswith(NPY):
        shape = np.load(io.BytesIO(r.content), allow_pickle=False).shape
    else:
        shape = np.asarray(r.json()["images"], dtype=np.float32).shape
    return None if shape == (DECODE_BATCH, *m.shape) else f"images of shape {shape}"


def _encode1_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    return [
        RequestSpec("POST", "/v1/encode", *_json({"images": [base64.b64encode(png).decode()]}))
        for png in m.pngs
    ]


def _encode1_check(r: httpx.Response, m: ModelInfo) -> str | None:
    shape = np.asarray(r.json()["mean"]).shape
    return None if shape == (1, m.latent_dim) else f"mean of shape {shape}"


SAMPLE_N = 8


def _sample_build(kind: str, m: ModelInfo) -> list[RequestSpec]:
    return [RequestSpec("POST", "/v1/sample", *_json({"n": SAMPLE_N, "seed": seed})) for seed in range(256)]


def _sample_check(r: httpx.Response, m: ModelInfo) -> str | None:
    images = r.json()["images"]
    return None if len(images) == SAMPLE_N else f"{len(images)} images"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "decode1_png", "/v1/decode, 1 latent -> PNG", 1, ("decoder", 1), _decode1_build, _decode1_check
        ),
        Scenario(
            "decode256_npy",
            f"/v1/decode, {DECODE_BATCH} latents -> npy",
            DECODE_BATCH,
            ("decoder", DECODE_BATCH),
            _decode256_build,
            _decode256_check,
        ),
        Scenario(
            "encode1",
            "/v1/encode, 1 image (JSON base64 PNG)",
            1,
            ("encoder", 1),
            _encode1_build,
            _encode1_check,
        ),
        Scenario(
            "sample",
            f"/v1/sample, n={SAMPLE_N} (JSON base64 PNGs)",
            SAMPLE_N,
            ("decoder", SAMPLE_N),
            _sample_build,
            _sample_check,
        ),
    )
}


# --- servers -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server subprocess in its own process group, on loopback, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

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
                argv, cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
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
                r = httpx.get(f"{self.url}/readyz", timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.25)
        raise RuntimeError(
            f"{self.name} not ready after {ready_timeout_s:.0f}s (last: {last}); see {self.log_path}"
        )

    def stop(self) -> None:
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

    def wait_idle(self, max_s: float = 60.0, interval_s: float = 0.25, busy: float = 0.1) -> float:
        """Wait until the server uses under `busy` of a core (it may still run abandoned requests)."""
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
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    if getattr(args, "ours_cmd", None):
        exe = shlex.split(args.ours_cmd)
    workers = str(getattr(args, "workers", 1))
    host = ["--host", "127.0.0.1", "--port", "{port}", "--models-dir", str(models_dir), "--workers", workers]
    argv = [*exe, *host]
    env = {"VAE_DEFAULT_MODEL": model, "VAE_PROVIDER": args.provider, **extra_env, **dict(args.env)}
    return Server("ours", argv, env, out / "ours.log")


def naive_server(args: argparse.Namespace, model_path: Path, out: Path) -> Server:
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.naive_app:app", "--host", "127.0.0.1",
        "--port", "{port}", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {"BENCH_NAIVE_MODEL_DIR": str(model_path), "BENCH_NAIVE_PROVIDER": args.provider}
    return Server("naive", argv, env, out / "naive.log")


# --- models ------------------------------------------------------------------------------------------------


def resolve_models(models_dir: Path) -> tuple[Path, bool]:
    """The models folder to serve; when it has none, a tiny model trained here (and fallback=True)."""
    from service.manifest import list_model_names

    if models_dir.is_dir() and list_model_names(models_dir):
        return models_dir, False
    if not (FALLBACK_MODELS.is_dir() and list_model_names(FALLBACK_MODELS)):
        print(
            f"[bench] {models_dir}/ has no model; training a tiny fallback into {FALLBACK_MODELS}", flush=True
        )
        py, run_dir = sys.executable, "/tmp/bench-run"
        common = ["--data-dir", str(ROOT / "data")]
        subprocess.run(
            [py, "-m", "training", "train", "--run-dir", run_dir, "--epochs", "1", "--train-limit", "2000",
             "--test-limit", "200", "--latent-dim", "8", "--hidden-dims", "64", "--no-progress", *common],
            cwd=ROOT, check=True,
        )  # fmt: skip
        subprocess.run(
            [py, "-m", "training", "export", "--checkpoint", f"{run_dir}/last.pt", "--models-dir",
             str(FALLBACK_MODELS), "--name", "mnist", "--k", "0", *common],
            cwd=ROOT, check=True,
        )  # fmt: skip
    return FALLBACK_MODELS, True


def default_model(models_dir: Path) -> str:
    """The model the service answers with when a request names none (service.inference.registry's rule)."""
    from service.manifest import list_model_names

    names = list_model_names(models_dir)
    chosen = os.environ.get("VAE_DEFAULT_MODEL") or ("mnist" if "mnist" in names else sorted(names)[0])
    return chosen


def model_info(models_dir: Path, name: str, raw: RawModel) -> ModelInfo:
    from service.manifest import model_dir

    path = model_dir(models_dir, name)
    pngs = [_png(img) for img in raw.inputs("encoder", 64, seed=3)]  # decoded digits
    shape = raw.manifest.image.shape
    return ModelInfo(name, path, raw.manifest.latent_dim, shape, tuple(pngs))


# --- the run ---------------------------------------------------------------------------------------------


def machine() -> dict:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    cpu = info.get("model name", "unknown")
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    if "avx512f" in info.get("flags", "").split():
        cpu += ", AVX-512"
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "service"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "git_commit": (
            commit.stdout.strip() + (" + uncommitted service/ changes" if dirty.stdout.strip() else "")
        )
        or None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def probe(server: Server, scenario: Scenario, specs: list[RequestSpec], info: ModelInfo) -> str | None:
    """One request, checked for the right answer, so a sweep never benchmarks fast error responses."""
    spec = specs[0]
    try:
        r = httpx.request(
            spec.method, server.url + spec.path, content=spec.content, headers=spec.headers, timeout=60
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:300]}"
    try:
        return scenario.check(r, info)
    except Exception as exc:  # a malformed answer is a finding, not a crash of the harness
        return f"unreadable answer ({type(exc).__name__}: {exc})"


def drive(server: Server, specs: list[RequestSpec], items: int, concurrency: int, args) -> dict:
    """One level against one server, then wait until the server has worked off what was abandoned."""
    load = {"total": args.requests} if args.requests else {"duration_s": args.duration}
    result = run_load_sync(
        server.url,
        specs,
        concurrency=concurrency,
        warmup=args.warmup if args.warmup is not None else max(2 * concurrency, 8),
        warmup_s=None if args.requests else min(2.0, args.duration),
        items_per_request=items,
        server_cpu=server.cpu_seconds,
        client=args.client,
        **load,
    )
    row = result.to_dict()
    row["settle_s"] = server.wait_idle()
    return row


def sweep(servers: list[Server], info: ModelInfo, args) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    failures: dict[str, str] = {}
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        pools = {s.name: scenario.build(s.name, info) for s in servers}
        live = []
        for server in servers:
            problem = probe(server, scenario, pools[server.name], info)
            if problem:
                failures[f"{name}/{server.name}"] = problem
                print(f"[bench] {name} on {server.name}: SKIPPED: {problem}", flush=True)
            else:
                live.append(server)
        for concurrency in args.concurrency:
            for server in live:
                row = {"scenario": name, "target": server.name}
                row.update(drive(server, pools[server.name], scenario.items, concurrency, args))
                rows.append(row)
                print(
                    f"[bench] {name:14s} c={concurrency:<4d} {server.name:6s} "
                    f"{row['requests_per_s']:9.1f} req/s {row['items_per_s']:11.1f} items/s  "
                    f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                    f"server {row['server_cpu_ms_per_request']} CPU-ms/req client {row['client_cpu_s']} CPU-s"
                    + (f"  errors {row['errors']}" if row["errors"] else "")
                    + (f"  cut off {row['unfinished']}" if row["unfinished"] else ""),
                    flush=True,
                )
    return rows, failures


def measure_raw(model: RawModel, args, when: str) -> dict:
    """The in-process call behind each scenario, items/s (the scenario's batch size)."""
    limits = {}
    for name in args.scenarios:
        key = raw_key(name)
        if key not in limits:
            graph, batch = SCENARIOS[name].raw
            limits[key] = measure(model, graph, batch, args.raw_duration)
            print(f"[bench] raw {key} ({when}): {limits[key]['items_per_s']:,.0f} items/s", flush=True)
    return limits


def raw_key(scenario: str) -> str:
    graph, batch = SCENARIOS[scenario].raw
    return f"{graph}_b{batch}"


def add_ratios(rows: list[dict], raw_limits: dict) -> None:
    """In place: ours/naive requests/s at the same scenario and concurrency, and ours/raw items/s."""
    naive = {(r["scenario"], r["concurrency"]): r for r in rows if r["target"] == "naive"}
    for r in rows:
        if r["target"] != "ours":
            continue
        base = naive.get((r["scenario"], r["concurrency"]))
        r["vs_naive_rps"] = (
            round(r["requests_per_s"] / base["requests_per_s"], 2) if base and base["ok"] else None
        )
        limit = raw_limits.get(raw_key(r["scenario"]))
        r["vs_raw_items"] = round(r["items_per_s"] / limit["items_per_s"], 4) if limit else None


def judge(rows: list[dict], raw_limits: dict, soak: dict | None) -> list[dict]:
    """The issue's targets, pass/fail, from this run's numbers."""
    verdicts = []
    by = {(r["scenario"], r["target"], r["concurrency"]): r for r in rows}
    levels = sorted({r["concurrency"] for r in rows if r["scenario"] == "decode1_png"})
    if levels:
        c = min(levels, key=lambda lvl: abs(lvl - TARGET_NAIVE_CONCURRENCY))
        ours, naive = by.get(("decode1_png", "ours", c)), by.get(("decode1_png", "naive", c))
        if ours and naive and ours["ok"] and naive["ok"]:
            ratio = ours["requests_per_s"] / naive["requests_per_s"]
            passed = ratio >= TARGET_NAIVE_RATIO and ours["p99_ms"] < naive["p99_ms"]
            verdicts.append({
                "target": f"/v1/decode 1 latent -> PNG at concurrency {c}: >= {TARGET_NAIVE_RATIO:g}x naive "
                "requests/s with a lower p99",
                "measured": f"{ratio:.2f}x ({ours['requests_per_s']:.0f} vs "
                f"{naive['requests_per_s']:.0f} req/s); "
                f"p99 {ours['p99_ms']:.1f} ms vs {naive['p99_ms']:.1f} ms",
                "pass": bool(passed),
            })  # fmt: skip
    ours256 = [r for r in rows if r["scenario"] == "decode256_npy" and r["target"] == "ours" and r["ok"]]
    limit = raw_limits.get(raw_key("decode256_npy"))
    if ours256 and limit:
        best = max(ours256, key=lambda r: r["items_per_s"])
        fraction = best["items_per_s"] / limit["items_per_s"]
        verdicts.append({
            "target": f"/v1/decode {DECODE_BATCH} latents -> npy: >= {TARGET_RAW_FRACTION:.0%} of raw "
            "onnxruntime items/s",
            "measured": f"{fraction:.1%} ({best['items_per_s']:.0f} vs {limit['items_per_s']:.0f} items/s, "
            f"best level c={best['concurrency']})",
            "pass": fraction >= TARGET_RAW_FRACTION,
        })  # fmt: skip
    if soak:
        verdicts.append({
            "target": f"RSS flat within {TARGET_RSS_GROWTH_MB:g} MB over 100k requests",
            "measured": f"{soak['growth_mb']:+.1f} MB over {soak['requests']} requests "
            f"({soak['rss_mb'][0]:.0f} -> {soak['rss_mb'][-1]:.0f} MB)",
            "pass": abs(soak["growth_mb"]) <= TARGET_RSS_GROWTH_MB and soak["requests"] >= 100_000,
        })  # fmt: skip
    return verdicts


def soak(server: Server, info: ModelInfo, n: int, concurrency: int, client: str, samples: int = 10) -> dict:
    """RSS of the server before and after `n` decode-1-PNG requests (after a warm-up that fills its pools)."""
    scenario = SCENARIOS["decode1_png"]
    specs = scenario.build(server.name, info)
    run_load_sync(
        server.url, specs, concurrency=concurrency, total=max(2000, 20 * concurrency), client=client
    )
    rss = [round(server.rss_mb(), 1)]
    errors: dict[str, int] = {}
    done, started = 0, time.perf_counter()
    chunk = max(1, n // samples)
    while done < n:
        result = run_load_sync(
            server.url, specs, concurrency=concurrency, total=min(chunk, n - done), client=client
        )
        for k, v in result.errors.items():
            errors[k] = errors.get(k, 0) + v
        done += result.requests
        rss.append(round(server.rss_mb(), 1))
        print(f"[bench] soak {done}/{n} requests, server RSS {rss[-1]:.1f} MB", flush=True)
    return {
        "server": server.name,
        "scenario": scenario.name,
        "requests": done,
        "concurrency": concurrency,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_mb": rss,
        "growth_mb": round(rss[-1] - rss[0], 1),
        "max_growth_mb": round(max(rss) - rss[0], 1),
        "errors": errors,
    }


# --- GPU table -------------------------------------------------------------------------------------------


def gpu_table(models_dir: Path, args, out: Path) -> list[dict]:
    """Items/s at batch 1, 64, 1024 for encode and decode of every served model: raw, then via the service.

    The service runs with VAE_MAX_BATCH_SIZE and the per-request caps at the largest batch, so a request of
    1024 items is one onnxruntime call there too; `--gpu-concurrency` clients keep the device busy.
    """
    from service.manifest import list_model_names, model_dir

    batches = args.gpu_batches
    names = args.gpu_models or list_model_names(models_dir)
    rows: list[dict] = []
    for name in names:
        raw = RawModel.open(model_dir(models_dir, name), args.provider)
        for graph in ("encoder", "decoder"):
            for batch in batches:
                r = measure(raw, graph, batch, args.raw_duration)
                rows.append({"model": name, "path": "raw", "providers": raw.providers, **r})
                print(f"[bench] gpu raw {name} {graph} b={batch}: {r['items_per_s']:.0f} items/s", flush=True)
    top = max(batches)
    env = {
        "VAE_MAX_BATCH_SIZE": str(top),
        "VAE_MAX_IMAGES_PER_REQUEST": str(top),
        "VAE_MAX_LATENTS_PER_REQUEST": str(max(top, 4096)),
        "VAE_MAX_QUEUE": str(max(8192, 4 * top * args.gpu_concurrency)),
        "VAE_MAX_BODY_BYTES": str(256 * 1024 * 1024),
    }
    server = ours_server(args, models_dir, names[0], out, env)
    try:
        server.start()
        listing = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        providers = {m["name"]: m.get("providers") for m in listing.get("models", [])}
        for name in names:
            raw = RawModel.open(model_dir(models_dir, name), "cpu")  # only to draw inputs
            for graph in ("encoder", "decoder"):
                for batch in batches:
                    specs = _gpu_requests(raw, name, graph, batch)
                    result = run_load_sync(
                        server.url, specs, concurrency=args.gpu_concurrency, duration_s=args.duration,
                        warmup=2 * args.gpu_concurrency, items_per_request=batch, client=args.client,
                    )  # fmt: skip
                    rows.append({
                        "model": name, "path": "service", "providers": providers.get(name), "graph": graph,
                        "batch": batch,
                        "items_per_s": result.items_per_s, "calls_per_s": result.requests_per_s,
                        "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors,
                    })  # fmt: skip
                    print(
                        f"[bench] gpu service {name} {graph} b={batch}: {result.items_per_s:.0f} items/s "
                        f"{result.errors or ''}",
                        flush=True,
                    )
    finally:
        server.stop()
    return rows


def _gpu_requests(raw: RawModel, name: str, graph: str, batch: int) -> list[RequestSpec]:
    """Decode: the npy fast path both ways. Encode: JSON base64 PNGs (the service's only image input)."""
    if graph == "decoder":
        z = raw.inputs("decoder", batch, seed=5)
        headers = {"content-type": NPY, "accept": NPY}
        return [RequestSpec("POST", f"/v1/decode?model={name}", _npy(z), headers)]
    encoded = [base64.b64encode(_png(img)).decode() for img in raw.inputs("encoder", batch, seed=6)]
    body, headers = _json({"model": name, "images": encoded})
    return [RequestSpec("POST", "/v1/encode", body, {**headers, "accept": NPY})]


# --- report --------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gb']} GB RAM; "
        f"Python {m['python']}, onnxruntime {m['onnxruntime']}; commit {m['git_commit']}; {m['date']}; "
        "load average at start "
        f"{m['loadavg_start'][0]:.2f}, at end {m.get('loadavg_end', [0])[0]:.2f}.",
        "",
        f"Command: `{report['command']}`",
    ]
    if report.get("model"):
        mod = report["model"]
        lines += [
            "",
            f"Model: `{mod['name']}` ({mod['path']}, latent {mod['latent_dim']}, image "
            f"{'x'.join(map(str, mod['shape']))}); provider {report['provider']}; {report['load']}.",
        ]
    if report.get("model", {}).get("fallback"):
        lines += ["", "**Fallback model**: models/ had no model, so a tiny MLP trained on the spot was used."]
    if report.get("raw"):
        lines += ["", "Raw onnxruntime in-process, same session options as the service, items/s:", ""]
        lines += [
            "| call | items/s (the limit: best of both) | calls/s | before the sweep | after the sweep |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        runs = report.get("raw_runs", [])
        for key, r in report["raw"].items():
            each = [_fmt(run[key]["items_per_s"], 0) if key in run else "-" for run in runs] + ["-", "-"]
            lines.append(
                f"| {key} | {_fmt(r['items_per_s'], 0)} | {_fmt(r['calls_per_s'], 0)} "
                f"| {each[0]} | {each[1]} |"
            )
    for name in report["scenarios"]:
        rows = [r for r in report["rows"] if r["scenario"] == name]
        lines += ["", f"**{SCENARIOS[name].title}**", ""]
        if not rows:
            lines.append("(no results)")
        else:
            lines += [
                "| concurrency | target | req/s | items/s | p50 ms | p99 ms | server CPU ms/req | errors "
                "| ours/naive req/s | ours/raw items/s |",
                "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
            ]
            for r in rows:
                errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
                if not r["ok"] and r.get("unfinished"):
                    errors += f"; none finished in the window ({r['unfinished']} in flight)"
                vs_naive = f"{r['vs_naive_rps']:.2f}x" if r.get("vs_naive_rps") is not None else ""
                vs_raw = f"{r['vs_raw_items']:.1%}" if r.get("vs_raw_items") is not None else ""
                lines.append(
                    f"| {r['concurrency']} | {r['target']} | {_fmt(r['requests_per_s'])} "
                    f"| {_fmt(r['items_per_s'])} | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} "
                    f"| {_fmt(r.get('server_cpu_ms_per_request'), 3)} | {errors} | {vs_naive} | {vs_raw} |"
                )
        for key, problem in report["failures"].items():
            if key.startswith(name + "/"):
                lines.append(f"\n{key.split('/')[1]} skipped: {problem}")
    if report.get("soak"):
        s = report["soak"]
        lines += [
            "",
            f"Memory soak: {s['requests']} `{s['scenario']}` requests at concurrency {s['concurrency']} in "
            f"{s['seconds']} s; server RSS (MB) sampled {len(s['rss_mb'])} times: {s['rss_mb']}; growth "
            f"{s['growth_mb']:+.1f} MB (max {s['max_growth_mb']:+.1f} MB); errors {s['errors'] or 0}.",
        ]
    if report.get("targets"):
        lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
        for v in report["targets"]:
            lines.append(f"| {v['target']} | {v['measured']} | {'PASS' if v['pass'] else 'FAIL'} |")
    if report.get("gpu_table"):
        lines += [
            "",
            "| model | path | providers | graph | batch | items/s | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in report["gpu_table"]:
            if "graph" in r:
                lines.append(
                    f"| {r['model']} | {r['path']} | {', '.join(r.get('providers') or ['?'])} | {r['graph']} "
                    f"| {r['batch']} "
                    f"| {_fmt(r['items_per_s'], 0)} | {_fmt(r.get('p50_ms'), 2)} "
                    f"| {_fmt(r.get('p99_ms'), 2)} |"
                )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="folder for results.json/.md and logs"
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", help="model to benchmark (default: the service's default model)")
    p.add_argument("--provider", choices=["cpu", "cuda", "auto"], default="cpu", help="sets VAE_PROVIDER")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 128])
    p.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--targets", nargs="+", choices=["ours", "naive"], default=["ours", "naive"])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per level and target")
    p.add_argument("--requests", type=int, help="a fixed number of requests per level instead of --duration")
    p.add_argument(
        "--warmup", type=int, help="uncounted requests before each level (default: 2 x concurrency)"
    )
    p.add_argument("--raw-duration", type=float, default=3.0, help="seconds per raw onnxruntime measurement")
    p.add_argument("--quick", action="store_true", help="smoke run: concurrency 1 and 64, 1 s per level")
    p.add_argument(
        "--soak", type=int, default=0, metavar="N", help="after the sweep, N requests for the RSS check"
    )
    p.add_argument("--soak-concurrency", type=int, default=64)
    p.add_argument("--only-soak", action="store_true", help="skip raw and the sweep; just the soak")
    p.add_argument(
        "--gpu-table", action="store_true", help="items/s at batch 1/64/1024, raw and via the service"
    )
    p.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--gpu-models", nargs="+", help="models for --gpu-table (default: all in --models-dir)")
    p.add_argument("--gpu-concurrency", type=int, default=8)
    p.add_argument(
        "--client",
        choices=["httpx", "raw"],
        default="httpx",
        help="load generator engine: httpx, or a minimal HTTP/1.1 client that costs the shared CPU far less",
    )
    p.add_argument("--workers", type=int, default=1, help="vae-serve --workers (processes)")
    p.add_argument(
        "--ours-cmd",
        help="command that starts the service instead of vae-serve (it gets --host --port --models-dir "
        "--workers), e.g. another checkout's vae-serve, for A/B runs",
    )
    p.add_argument(
        "--env", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)), metavar="KEY=VALUE",
        help="extra environment for the service, e.g. --env VAE_MAX_DELAY_MS=1 (repeatable)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency = [1, 64] if args.concurrency == [1, 8, 64, 128] else args.concurrency
        args.duration, args.raw_duration = 1.0, 0.6
    return args


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that stops the servers always runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    models_dir, fallback = resolve_models(args.models_dir)
    report: dict = {
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine(),
        "provider": args.provider,
        "scenarios": [] if args.only_soak or args.gpu_table else args.scenarios,
        "rows": [],
        "failures": {},
    }
    with _terminate_on_sigterm():
        if args.gpu_table:
            report["gpu_table"] = gpu_table(models_dir, args, out)
            return _finish(report, out)
        name = args.model or default_model(models_dir)
        from service.manifest import model_dir

        raw_model = RawModel.open(model_dir(models_dir, name), args.provider)
        info = model_info(models_dir, name, raw_model)
        report["model"] = {
            "name": name, "path": str(info.path), "latent_dim": info.latent_dim, "shape": list(info.shape),
            "fallback": fallback,
        }  # fmt: skip
        load = f"{args.requests} requests" if args.requests else f"{args.duration:g} s"
        report["load"] = (
            f"closed-loop load generator ({args.client} client), {load} per level after a warm-up"
        )
        raw_runs = [] if args.only_soak else [measure_raw(raw_model, args, "before")]  # no server running yet
        servers: list[Server] = []
        try:
            if "ours" in args.targets or args.soak:
                servers.append(ours_server(args, models_dir, name, out, {}))
            if "naive" in args.targets and not args.only_soak:
                servers.append(naive_server(args, info.path, out))
            for server in servers:  # both start at once; startup is mostly imports and model loading
                server.launch()
            for server in servers:
                server.wait_ready()
                print(f"[bench] {server.name} ready on {server.url}", flush=True)
            if servers[0].name == "ours":
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    report["service_models"] = httpx.get(f"{servers[0].url}/v1/models", timeout=10).json()
            if not args.only_soak:
                targets = [s for s in servers if s.name in args.targets]
                report["rows"], report["failures"] = sweep(targets, info, args)
            if args.soak:
                report["soak"] = soak(servers[0], info, args.soak, args.soak_concurrency, args.client)
        finally:
            for server in servers:
                server.stop()
        if raw_runs:
            raw_runs.append(measure_raw(raw_model, args, "after"))
    # The limit is the better of the two raw measurements (before the servers started, after they stopped),
    # so a neighbour's load during one of them cannot flatter the service's ratio.
    raw_limits = {}
    for run in raw_runs:
        for key, row in run.items():
            if key not in raw_limits or row["items_per_s"] > raw_limits[key]["items_per_s"]:
                raw_limits[key] = row
    report["raw"], report["raw_runs"] = raw_limits, raw_runs
    add_ratios(report["rows"], raw_limits)
    report["targets"] = judge(report["rows"], raw_limits, report.get("soak"))
    return _finish(report, out)


def _finish(report: dict, out: Path) -> dict:
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    (out / "results.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "results.md").write_text(text)
    print("\n" + text, flush=True)
    return report


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
