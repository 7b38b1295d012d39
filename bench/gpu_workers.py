"""On a GPU host: the default worker plan against one process over HTTP, and batch 1024 against raw calls.

    bash bench/gpu_device.sh                        # on a lent GPU machine: install, then the line below
    python -m bench.gpu_workers --provider cuda --out DIR [--duration 4] [--rounds 2]
    python -m bench.gpu_workers --provider cpu --duration 0.5 --rounds 1 --out /tmp/g   # a dry run on CPU

Steps, in one command (about 4 minutes on a 16-core H100 host):
1. Raw onnxruntime: the default model's decoder opened as the service opens it, CUDA asked for; nothing more
   runs unless `get_providers()` lists CUDA first (a CUDA provider that fails to load falls back to CPU
   silently). Items/s at batch 1 and 1024 with I/O binding (bench.raw).
2. Two `vae-serve` servers from this checkout, started one after the other: the default plan (no
   `--workers`: service/server/workers.py chooses from the cores and GPUs) and `--workers 1`, both with
   VAE_PROVIDER=cuda (a model whose sessions are not on CUDA is refused, so /readyz proves CUDA) and
   VAE_MAX_BATCH_SIZE=1024. /v1/models must list CUDA first for every model; the plan and its reason are
   recorded.
3. Rounds, the targets taking turns (the one not measured is paused with SIGSTOP): batch-1 decode (one
   latent as JSON in, a base64 PNG out: the CPU benchmark's request) at c=1, p50 and p99; the same at c=64,
   requests/s, the load coming from several client processes so that the generator is not the limit;
   batch-1024 decode (npy in and out), items/s at 2 connections per worker.
4. GPU memory per worker process (nvidia-smi) after the rounds, against the plan's per-worker bound.
5. `gpu_workers.json` (every number, the command, the host) and `gpu_workers.md` (the table for
   docs/benchmarks.md, with the issue's targets checked) in `--out`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.load import LoadResult, RequestSpec, run_load_sync
from bench.scenarios import NPY, default_model, json_body, npy_bytes
from bench.servers import ROOT, Server, free_port

CUDA = "CUDAExecutionProvider"
BIG = 1024


def _server(name: str, workers: int | None, args: argparse.Namespace, model: str) -> Server:
    argv = [sys.executable, "-m", "service.server.cli", "--host", "127.0.0.1", "--port", "{port}"]
    argv += ["--models-dir", str(args.models_dir.resolve())]
    if workers:
        argv += ["--workers", str(workers)]
    env = {
        "VAE_PROVIDER": args.provider, "VAE_DEFAULT_MODEL": model, "VAE_GRPC_PORT": str(free_port()),
        "VAE_MAX_BATCH_SIZE": str(BIG), "VAE_MAX_QUEUE": str(64 * BIG), "VAE_MAX_BODY_BYTES": str(64 << 20),
        "VAE_RELOAD_INTERVAL_S": "0", "VAE_LOG_LEVEL": "warning",
    }  # fmt: skip
    if args.models:
        env["VAE_MODELS"] = ",".join(args.models)
    return Server(name, argv, env, args.out / f"{name}.log")


def check_raw(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """Raw items/s at batch 1 and 1024 with the service's session options; CUDA must really be active."""
    from bench.raw import RawModel, measure
    from vae_contract.manifest import model_dir

    raw = RawModel.open(model_dir(args.models_dir, model), args.provider)
    if args.provider == "cuda" and raw.providers[:1] != [CUDA]:
        raise SystemExit(f"CUDA asked for, but onnxruntime runs the session on {raw.providers}: stopping")
    rows = {b: measure(raw, "decoder", b, args.raw_duration)["items_per_s"] for b in (1, BIG)}
    return {"providers": raw.providers, "items_per_s": rows}


def check_server(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    listing = httpx.get(f"{server.url}/v1/models", timeout=30).json()
    providers = {m["name"]: m.get("providers") for m in listing.get("models", [])}
    if args.provider == "cuda":
        off = {name: p for name, p in providers.items() if not p or p[0] != CUDA}
        if off:
            raise SystemExit(f"{server.name}: models not on CUDA: {off}")
    return {"serving": listing.get("serving"), "providers": providers}


def _one_client(
    url: str, specs: list[RequestSpec], concurrency: int, duration: float, items: int
) -> dict[str, Any]:
    return run_load_sync(
        url, specs, concurrency=concurrency, duration_s=duration, warmup_s=1.0, warmup=2 * concurrency,
        client="raw", items_per_request=items, timeout_s=120.0,
    ).to_dict()  # fmt: skip


def load(
    url: str, specs: list[RequestSpec], concurrency: int, duration: float, procs: int, items: int = 1
) -> dict[str, Any]:
    """Closed-loop load from `procs` client processes (one asyncio loop each), summed."""
    if procs <= 1:
        return _one_client(url, specs, concurrency, duration, items)
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.starmap(_one_client, [(url, specs, c, duration, items) for c in shares if c])
    ok = [p for p in parts if p["p50_ms"] is not None]
    errors: dict[str, int] = {}
    for part in parts:
        for key, count in part["errors"].items():
            errors[key] = errors.get(key, 0) + count
    return {
        "concurrency": concurrency, "client_processes": len(parts),
        "requests_per_s": round(sum(p["requests_per_s"] for p in parts), 1),
        "items_per_s": round(sum(p["items_per_s"] for p in parts), 1),
        "p50_ms": round(statistics.median(p["p50_ms"] for p in ok), 3) if ok else None,
        "p99_ms": max((p["p99_ms"] for p in ok), default=None), "errors": errors,
    }  # fmt: skip


def requests(latent_dim: int) -> tuple[list[RequestSpec], list[RequestSpec]]:
    """Batch-1 decode as the CPU benchmark sends it; batch-1024 decode as npy both ways."""
    rng = np.random.default_rng(1)
    small = [
        RequestSpec(
            "POST", "/v1/decode", *json_body({"latents": [rng.standard_normal(latent_dim).round(5).tolist()]})
        )
        for _ in range(16)
    ]
    z = rng.standard_normal((BIG, latent_dim)).astype(np.float32)
    big = [RequestSpec("POST", "/v1/decode", npy_bytes(z), {"content-type": NPY, "accept": NPY})]
    return small, big


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB of GPU memory per process, from nvidia-smi (empty without it)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip().isdigit() and used.strip().isdigit():
            found[int(pid)] = int(used)
    return found


def host() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {"python": platform.python_version(), "onnxruntime": ort.__version__,
                            "available": ort.get_available_providers(), "cpus": os.cpu_count()}  # fmt: skip
    from service.server.workers import usable_cores

    info["usable_cores"] = usable_cores()
    try:
        info["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def table(report: dict[str, Any]) -> str:
    raw = report["raw"]["items_per_s"]
    lines = [
        f"Host: {report['host'].get('gpu')}, {report['host']['usable_cores']} usable cores, onnxruntime "
        f"{report['host']['onnxruntime']}, provider {report['provider']}; `{report['command']}`.",
        "",
        "| plan | workers | c=1 p50 ms | c=1 p99 ms | c=64 req/s | batch 1024 items/s | GPU MiB per worker |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, target in report["targets"].items():
        s = target["summary"]
        lines.append(
            f"| {name} | {target['workers']} | {s['c1_p50_ms']} | {s['c1_p99_ms']} | {s['c64_req_s']:,.0f} "
            f"| {s['big_items_s']:,.0f} | {target.get('gpu_mib_per_worker', '-')} |"
        )
    lines.append(f"| raw onnxruntime (I/O binding) | - | - | - | - | {raw[BIG]:,.0f} | - |")
    plan, one = report["targets"]["default plan"], report["targets"]["one process"]
    cores = report["host"]["usable_cores"]
    speedup = plan["summary"]["c64_req_s"] / max(one["summary"]["c64_req_s"], 1e-9)
    goal = (cores - 1) / 1.2
    share = plan["summary"]["big_items_s"] / max(raw[BIG], 1e-9)
    p50 = plan["summary"]["c1_p50_ms"]
    lines += [
        "",
        f"- batch-1 decode over HTTP at c=1: p50 {p50} ms (target < 2 ms: {'met' if p50 < 2 else 'missed'})",
        f"- c=64: default plan / one process = {speedup:.2f}x (target (cores - 1) / 1.2 = {goal:.2f}x: "
        f"{'met' if speedup >= goal else 'missed'})",
        f"- batch 1024 over HTTP / raw = {share:.0%} (target 50%: {'met' if share >= 0.5 else 'missed'})",
        f"- plan: {plan['check']['serving'] and plan['check']['serving'].get('reason')}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--models", nargs="+", help="VAE_MODELS for both servers (default: every model found)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per level")
    p.add_argument("--raw-duration", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--client-procs", type=int, default=0, help="client processes at c=64 (0: cores / 4)")
    p.add_argument("--workers", type=int, help="the plan's --workers (default: the service's own choice)")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-gpu-workers"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = default_model(args.models_dir)
    from vae_contract.manifest import model_dir, read_manifest

    latent_dim = read_manifest(model_dir(args.models_dir, model)).latent_dim
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.gpu_workers", *(argv if argv is not None else sys.argv[1:])]),
        "provider": args.provider, "host": host(), "model": model,
    }  # fmt: skip
    print(json.dumps(report["host"]), flush=True)
    report["raw"] = check_raw(args, model)
    print(json.dumps({"raw": report["raw"]}), flush=True)
    procs = args.client_procs or max(1, (report["host"]["usable_cores"] or 4) // 4)
    servers = {
        "default plan": _server("plan", args.workers, args, model),
        "one process": _server("one", 1, args, model),
    }
    small, big = requests(latent_dim)
    rows: list[dict[str, Any]] = []
    targets: dict[str, Any] = {}
    try:
        for server in servers.values():  # one after the other: each worker loads its sessions on the GPU
            server.start(ready_timeout_s=300)
            # /readyz answers once one worker is up; the others may still be creating and warming theirs.
            server.wait_idle(max_s=240)
            server.pause()
        for name, server in servers.items():
            server.resume()
            check = check_server(server, args)
            server.pause()
            workers = (check["serving"] or {}).get("workers", 1)
            targets[name] = {"workers": workers, "check": check}
            print(json.dumps({name: check["serving"]}), flush=True)
        for r in range(args.rounds):
            order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
            for name, server in order:
                server.resume()
                server.wait_idle(max_s=10)
                workers = targets[name]["workers"]
                levels = {
                    "c1": load(server.url, small, 1, args.duration, 1),
                    "c64": load(server.url, small, 64, args.duration, procs),
                    "big": load(server.url, big, 2 * workers, args.duration, min(procs, 2 * workers), BIG),
                }
                for level, result in levels.items():
                    row = {"round": r, "target": name, "level": level, **_short(result)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                server.pause()
        memory = gpu_memory_by_pid()
        for name, server in servers.items():
            from bench.servers import _descendants

            assert server.proc is not None
            used = [memory[p] for p in _descendants(server.proc.pid) if p in memory]
            if used:
                targets[name]["gpu_mib_per_worker"] = max(used)
                targets[name]["gpu_mib_total"] = sum(used)
    finally:
        for server in servers.values():
            server.stop()
    for name, target in targets.items():
        mine = [r for r in rows if r["target"] == name]

        def med(level: str, key: str, mine: list[dict[str, Any]] = mine) -> float:
            values = [r[key] for r in mine if r["level"] == level and r[key] is not None]
            return round(statistics.median(values), 3) if values else float("nan")

        target["summary"] = {
            "c1_p50_ms": med("c1", "p50_ms"), "c1_p99_ms": med("c1", "p99_ms"),
            "c64_req_s": med("c64", "requests_per_s"), "big_items_s": med("big", "items_per_s"),
        }  # fmt: skip
    report.update(targets=targets, rows=rows, seconds=round(time.monotonic() - started, 1))
    report["table"] = table(report)
    (args.out / "gpu_workers.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu_workers.md").write_text(report["table"] + "\n")
    print("\n" + report["table"], flush=True)
    return report


def _short(result: dict[str, Any] | LoadResult) -> dict[str, Any]:
    data = result.to_dict() if isinstance(result, LoadResult) else result
    keys = ("concurrency", "requests_per_s", "items_per_s", "p50_ms", "p99_ms", "errors")
    return {k: data.get(k) for k in keys}


if __name__ == "__main__":
    main()
