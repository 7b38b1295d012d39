"""Server CPU per request on the peers' scenario (one latent in, one base64 PNG out), in one short command.

CPU time per request (user + system of the server and all its processes, from /proc, over the timed window
divided by the requests answered) moves far less with a neighbour's load than throughput or latency do, so
it is the number to compare two builds with on a shared machine. Targets take turns, round by round:

- `ours`: `vae-serve` from this checkout (its default worker plan unless `--workers`);
- `base`: `vae-serve` from another checkout (`--base DIR`, e.g. a `git worktree` of the previous commit),
  for an A/B of a change;
- `naive`: bench/naive_app.py (one `run()` per request under uvicorn);
- `floor-http` and `floor-work`: bench/floor_app.py, no framework: uvicorn answering a stored copy of the
  answer, and uvicorn doing just the request's work (parse, one run, PNG, base64). What a framework,
  limits and metrics can never win back.

    python -m bench.cpu_per_request                       # ours at c=1 and c=64, 3 rounds of 4 s
    python -m bench.cpu_per_request --targets ours naive --workers 1
    python -m bench.cpu_per_request --targets ours floor-work floor-http --workers 1
    git worktree add /tmp/base HEAD~1 && python -m bench.cpu_per_request --targets ours base --base /tmp/base

Load comes from wrk when it is installed (it costs the shared cores least), else the harness's raw client.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.load import LoadResult, RequestSpec, run_load_sync
from bench.scenarios import default_model, json_body
from bench.servers import ROOT, Server, cli_module, floor_server, naive_server
from bench.wrk import available as wrk_available
from bench.wrk import run_wrk

TARGETS = ["ours", "base", "naive", "floor-http", "floor-work"]


def _service(name: str, source: Path, args: argparse.Namespace, model: str) -> Server:
    argv = [sys.executable, "-m", cli_module(source), "--host", "127.0.0.1", "--port", "{port}"]
    # Each checkout serves its own models folder: an older service refuses manifests that name newer files.
    models_dir = args.models_dir if source.resolve() == ROOT else source / "models"
    argv += ["--models-dir", str(models_dir.resolve())]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    env = {"VAE_DEFAULT_MODEL": model, "VAE_PROVIDER": "cpu"}  # otherwise the defaults, access log included
    env["VAE_GRPC_PORT"] = "0"  # HTTP only: two targets up at once must not contend for one gRPC port
    env["PYTHONPATH"] = str(source.resolve())  # run from that checkout's source tree, same interpreter
    return Server(name, argv, env, args.out / f"{name}.log", cwd=source.resolve())


def _request(target: str, latent_dim: int) -> RequestSpec:
    import numpy as np

    z = np.random.default_rng(1).standard_normal(latent_dim).round(5).tolist()
    path = "/v1/decode?format=png" if target == "naive" else "/v1/decode"
    return RequestSpec("POST", path, *json_body({"latents": [z]}))


def _level(server: Server, spec: RequestSpec, concurrency: int, args: argparse.Namespace) -> LoadResult:
    if wrk_available() and not args.raw_client:
        return run_wrk(
            server.url, spec, concurrency=concurrency, duration_s=args.duration, warmup_s=1.0,
            server_cpu=server.cpu_seconds,
        )  # fmt: skip
    before = server.cpu_seconds()
    result = run_load_sync(
        server.url, [spec], concurrency=concurrency, duration_s=args.duration, warmup_s=1.0, client="raw"
    )
    result.server_cpu_ms_per_request = round(
        1000 * (server.cpu_seconds() - before) / max(result.requests, 1), 3
    )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=["ours"], choices=TARGETS)
    p.add_argument("--base", type=Path, help="checkout to run as target 'base'")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per level (after a 1 s warm-up)")
    p.add_argument("--workers", type=int, help="worker processes of ours/base (default: their own plan)")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--model", help="model name (default: the service's default)")
    p.add_argument("--raw-client", action="store_true", help="the harness's raw asyncio client, not wrk")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-cpu"), help="server logs and results.json")
    args = p.parse_args(argv)
    if "base" in args.targets and args.base is None:
        p.error("--targets base needs --base DIR")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(args.models_dir)
    from vae_contract.manifest import model_dir, read_manifest

    path = model_dir(args.models_dir, model)
    latent_dim = read_manifest(path).latent_dim
    servers: dict[str, Server] = {}
    for target in args.targets:
        if target == "naive":
            ns = argparse.Namespace(provider="cpu")
            servers[target] = naive_server(ns, path, args.out)
        elif target.startswith("floor-"):
            servers[target] = floor_server(target.removeprefix("floor-"), path, args.out)
        else:
            servers[target] = _service(target, ROOT if target == "ours" else args.base, args, model)
    rows: list[dict] = []
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        for r in range(args.rounds):
            order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
            for name, server in order:
                for other in servers.values():  # only the target being measured runs
                    (other.resume if other is server else other.pause)()
                server.wait_idle(max_s=10)
                for c in args.concurrency:
                    res = _level(server, _request(name, latent_dim), c, args)
                    row = {"round": r, "target": name, "concurrency": c, "requests": res.requests,
                           "errors": res.errors, "req_s": res.requests_per_s, "p50_ms": res.p50_ms,
                           "server_cpu_ms": res.server_cpu_ms_per_request}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = []
    for name in servers:
        for c in args.concurrency:
            mine = [row for row in rows if row["target"] == name and row["concurrency"] == c]
            cpu = [row["server_cpu_ms"] for row in mine if row["server_cpu_ms"] is not None]
            summary.append({
                "target": name, "concurrency": c,
                "server_cpu_ms_median": round(statistics.median(cpu), 3) if cpu else None,
                "server_cpu_ms_min": min(cpu, default=None),
                "p50_ms_median": statistics.median(row["p50_ms"] or 0 for row in mine),
                "req_s_median": statistics.median(row["req_s"] for row in mine),
            })  # fmt: skip
    print("\ntarget   c    CPU ms/req median    min   p50 ms median   req/s median")
    for s in summary:
        print(
            f"{s['target']:<8} {s['concurrency']:<4} {s['server_cpu_ms_median'] or 0:>17.3f} "
            f"{s['server_cpu_ms_min'] or 0:>6.3f} {s['p50_ms_median']:>15.3f} {s['req_s_median']:>14.0f}"
        )
    report = {"command": " ".join(["python -m bench.cpu_per_request", *(argv or sys.argv[1:])]),
              "rows": rows, "summary": summary}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
