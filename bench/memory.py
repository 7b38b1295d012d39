"""What one worker costs in memory: idle and peak RSS of a real `vae-serve` worker, per model set.

A worker is started alone (`--workers 1`, CPU provider, gRPC on a free port) from a source checkout, and for
each set of models it serves the harness reads:

- `startup_hwm_mb`: the worker's peak RSS while loading and warming up (VmHWM when it became ready);
- `idle_mb`: its RSS once ready and quiet;
- `peak_mb`: its peak RSS under the load (VmHWM after the load, the kernel's counter reset when the load
  starts by writing 5 to /proc/PID/clear_refs, so nothing is missed between samples), with the load's
  requests/s, p50 and errors beside it.

Model sets: `all` (every default model, as `vae-serve` loads them: the version policy's versions of every
model found), `none` (a model name that does not exist: the process with no model, the framework's own
cost), and with `--per-version` each loaded version alone (`VAE_MODELS=name`,
`VAE_VERSION_POLICY=specific:N`).

Loads (`--loads`), each at `--concurrency` connections (default 64) for `--duration` seconds after a warm-up:
- `decode1`: the throughput benchmark's request, one latent in and one base64 PNG out, to the default model;
- `mixed`: per loaded version, a batch-1 decode, encode and reconstruct (which runs the scorer graph of a
  pixel-group model), round robin, so every graph of every loaded version takes batches at once;
- `large`: per loaded version, reconstruct requests of `--large-images` images each (the biggest batches).

Targets take turns (`ours`, then `base` from another checkout with `--base DIR`, e.g. a `git worktree` of an
earlier commit), each started fresh per model set. `--env KEY=VALUE` sets a variable for every target, and
`--ours-env KEY=VALUE` for `ours` only (e.g. a setting that restores old behaviour, for an A/B in one build).
The load average is recorded with every row (memory barely moves with a neighbour's load; throughput does).

    python -m bench.memory                                      # ours, all models, decode1 + mixed
    python -m bench.memory --per-version --loads mixed          # each version alone
    git worktree add /tmp/base 9628ebf && python -m bench.memory --targets ours base --base /tmp/base

Everything listens on 127.0.0.1 only. Rows go to `--out`/memory.json; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.load import RequestSpec, run_load_sync
from bench.scenarios import json_body
from bench.servers import ROOT, Server, free_port

NO_MODEL = "no-such-model"  # a name no folder has: the worker starts, serves nothing, /healthz answers


def status_kb(pid: int, key: str) -> int:
    """A `Vm*` line of /proc/PID/status in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of `pid` to its current RSS (proc(5), clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def model_sets(models_dir: Path, per_version: bool, policy: str) -> list[tuple[str, dict[str, str]]]:
    """(label, environment) per model set to measure."""
    from vae_contract.manifest import list_model_names, list_versions

    sets: list[tuple[str, dict[str, str]]] = [("all", {}), ("none", {"VAE_MODELS": NO_MODEL})]
    if per_version:
        keep = int(policy.split(":")[1]) if policy.startswith("latest:") else 1
        for name in list_model_names(models_dir):
            for version in list_versions(models_dir, name)[-keep:]:
                env = {"VAE_MODELS": name, "VAE_VERSION_POLICY": f"specific:{version}"}
                sets.append((f"{name}/{version}", {**env, "VAE_DEFAULT_MODEL": name}))
    return sets


def worker(name: str, label: str, source: Path, models_dir: Path, env: dict[str, str], out: Path) -> Server:
    argv = [
        sys.executable,
        "-m",
        "service.server.cli",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--workers",
        "1",
    ]
    argv += ["--models-dir", str(models_dir.resolve())]
    base = {"VAE_PROVIDER": "cpu", "VAE_GRPC_PORT": str(free_port()), "VAE_RELOAD_INTERVAL_S": "0"}
    env = {**base, **env, "PYTHONPATH": str(source.resolve())}
    log = out / f"{name}-{label.replace('/', '-')}.log"
    return Server(name, argv, env, log, cwd=source.resolve())


def loaded(url: str) -> list[tuple[str, int, int]]:
    """(name, version, latent_dim) of every loaded version, from /v1/models; the default model's newest
    version first (it answers requests that name no model)."""
    listing = httpx.get(f"{url}/v1/models", timeout=30).json()
    found: list[tuple[str, int, int]] = []
    for model in listing.get("models", []):
        if model.get("latent_dim") is None:  # not loaded
            continue
        for version in model.get("versions") or [{"version": model["version"]}]:
            found.append((model["name"], int(version["version"]), int(model["latent_dim"])))
    default = listing.get("default_model")
    return sorted(found, key=lambda v: (v[0] != default, -v[1]))


def requests_for(url: str, load: str, versions: list[tuple[str, int, int]], large: int) -> list[RequestSpec]:
    """Prepared requests; images are the served model's own samples (realistic inputs, every shape right)."""
    rng = np.random.default_rng(1)
    if load == "decode1":
        dim = next(d for _, _, d in versions)  # the default model answers unnamed requests
        z = rng.standard_normal((64, dim)).round(5)
        return [RequestSpec("POST", "/v1/decode", *json_body({"latents": [row.tolist()]})) for row in z]
    specs = []
    for name, version, dim in versions:
        ref = f"{name}@{version}"
        n = large if load == "large" else 1
        sample = httpx.post(f"{url}/v1/sample", json={"model": ref, "n": n, "seed": 2}, timeout=60).json()
        images = sample["images"]
        if load == "large":
            specs.append(RequestSpec("POST", "/v1/reconstruct", *json_body({"model": ref, "images": images})))
            continue
        z = rng.standard_normal((1, dim)).round(5).tolist()
        specs.append(RequestSpec("POST", "/v1/decode", *json_body({"model": ref, "latents": z})))
        specs.append(RequestSpec("POST", "/v1/encode", *json_body({"model": ref, "images": images})))
        specs.append(RequestSpec("POST", "/v1/reconstruct", *json_body({"model": ref, "images": images})))
    return specs


def measure(server: Server, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start `server`, read its startup peak and idle RSS, then its peak under each load; stop it."""
    started = time.monotonic()
    server.start(ready_timeout_s=300) if label != "none" else _start_unready(server)
    ready_s = round(time.monotonic() - started, 1)
    assert server.proc is not None
    pid = server.proc.pid
    hwm = status_kb(pid, "VmHWM") / 1024
    server.wait_idle(max_s=20)
    time.sleep(args.settle)
    idle = status_kb(pid, "VmRSS") / 1024
    base = {"target": server.name, "models": label, "ready_s": ready_s, "startup_hwm_mb": round(hwm, 1),
            "idle_mb": round(idle, 1)}  # fmt: skip
    rows = []
    versions = loaded(server.url) if label != "none" else []
    for load in args.loads if versions else ["idle"]:
        row = {**base, "load": load, "load_avg": load_average()}
        if load != "idle":
            specs = requests_for(server.url, load, versions, args.large_images)
            row["peak_reset"] = reset_peak(pid)
            result = run_load_sync(
                server.url, specs, concurrency=args.concurrency, duration_s=args.duration,
                warmup=len(specs), warmup_s=2.0, client="raw", timeout_s=120.0,
            )  # fmt: skip
            row.update(
                peak_mb=round(status_kb(pid, "VmHWM") / 1024, 1),
                after_mb=round(status_kb(pid, "VmRSS") / 1024, 1),
                req_s=result.requests_per_s,
                p50_ms=result.p50_ms,
                errors=result.errors,
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    server.stop()
    return rows


def _start_unready(server: Server) -> None:
    """A worker with no model never becomes ready: wait for its liveness and the end of its startup."""
    server.ready_path = "/healthz"
    server.start(ready_timeout_s=120)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=["ours"], choices=["ours", "base"])
    p.add_argument("--base", type=Path, help="checkout to run as target 'base'")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--per-version", action="store_true", help="also each loaded version alone")
    p.add_argument("--sets", nargs="+", help="only these model sets (labels: all, none, name/version)")
    p.add_argument("--loads", nargs="+", default=["decode1", "mixed"], choices=["decode1", "mixed", "large"])
    p.add_argument("--large-images", type=int, default=64, help="images per request of the 'large' load")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load (after a warm-up)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before reading idle RSS")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for every target")
    p.add_argument("--ours-env", action="append", default=[], help="KEY=VALUE for target ours only")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-memory"))
    args = p.parse_args(argv)
    if "base" in args.targets and args.base is None:
        p.error("--targets base needs --base DIR")
    return args


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (target, model set, load), medians over rounds."""
    lines = [
        "| target | models | load | startup peak MB | idle MB | peak under load MB | req/s | p50 ms "
        "| load avg |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = list(dict.fromkeys((r["target"], r["models"], r["load"]) for r in rows))
    for target, models, load in keys:
        mine = [r for r in rows if (r["target"], r["models"], r["load"]) == (target, models, load)]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> str:
            values = [r[key] for r in mine if r.get(key) is not None]
            return f"{float(np.median(values)):.1f}" if values else "-"

        lines.append(
            f"| {target} | {models} | {load} | {med('startup_hwm_mb')} | {med('idle_mb')} | {med('peak_mb')} "
            f"| {med('req_s')} | {med('p50_ms')} | {med('load_avg')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from service.config import Settings

    policy = Settings(_env_file=None).version_policy  # type: ignore[call-arg]
    sets = model_sets(args.models_dir, args.per_version, policy)
    if args.sets:
        sets = [s for s in sets if s[0] in args.sets]
    sources = {"ours": ROOT, "base": args.base}
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for label, env in sets:
            order = args.targets if r % 2 == 0 else list(reversed(args.targets))
            for target in order:
                extra = {**_pairs(args.env), **(_pairs(args.ours_env) if target == "ours" else {}), **env}
                server = worker(target, label, sources[target], args.models_dir, extra, args.out)
                try:
                    rows.extend({"round": r, **row} for row in measure(server, label, args))
                finally:
                    server.stop()
    command = " ".join(["python -m bench.memory", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "rows": rows, "table": table(rows)}
    (args.out / "memory.json").write_text(json.dumps(report, indent=2))
    print("\n" + report["table"])
    return report


if __name__ == "__main__":
    main()
