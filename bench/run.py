"""Throughput benchmark: the service against the raw onnxruntime limit, a naive baseline and peer servers.

    .venv/bin/python -m bench.run --out bench/results            # the full sweep (`make bench`), ~6 minutes
    .venv/bin/python -m bench.run --quick --out /tmp/bench       # a smoke run, ~1.5 minutes
    .venv/bin/python -m bench.run --soak 100000 --only-soak      # memory: server RSS before/after N requests
    .venv/bin/python -m bench.run --gpu-table --provider cuda    # items/s at batch 1, 64, 1024 on a GPU host

Steps: measure the raw in-process onnxruntime call (bench/raw.py) while no server runs; start the service
(`vae-serve`) and the naive app (bench/naive_app.py under uvicorn) on free 127.0.0.1 ports and wait for
/readyz; then for every scenario and concurrency level drive both with the same closed-loop load generator
(bench/load.py), interleaved so a noisy neighbour hurts both alike. Writes `results.json` and `results.md`
(the table docs/benchmarks.md quotes) plus the servers' logs into --out. Servers are always stopped on exit.

Modules: bench/scenarios.py (what is sent, how answers are checked), bench/servers.py (the subprocesses),
bench/sweep.py (the measurements and targets), bench/gpu_table.py, bench/report.py (results.json/.md); this
file only parses the command line and runs them in order.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.gpu_table import gpu_table
from bench.peers import PEERS, PEERS_ROOT, ensure_venv
from bench.raw import RawModel
from bench.report import finish, machine
from bench.scenarios import SCENARIOS, default_model, model_info, resolve_models
from bench.servers import Server, describe_ours, naive_server, ours_server, peer_server
from bench.sweep import add_ratios, judge, measure_raw, soak, summarize_rounds, sweep
from bench.wrk import available as wrk_available

IDLE_CORES_FREEZE = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="folder for results.json/.md and logs"
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", help="model to benchmark (default: the service's default model)")
    p.add_argument("--provider", choices=["cpu", "cuda", "auto"], default="cpu", help="sets VAE_PROVIDER")
    p.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 8 64 128; --peers: 1 64)")
    p.add_argument(
        "--scenarios", nargs="+", choices=list(SCENARIOS),
        help="default: all but the peers' decode1_b64; with --peers: decode1_b64",
    )  # fmt: skip
    p.add_argument("--targets", nargs="+", choices=["ours", "naive"], default=["ours", "naive"])
    p.add_argument(
        "--peers", nargs="*", choices=list(PEERS), metavar="PEER",
        help=f"also run these peer servers (no names: all of {', '.join(PEERS)}), each from its own venv "
        f"under {PEERS_ROOT}, created on demand from bench/peers/<name>.txt",
    )  # fmt: skip
    p.add_argument(
        "--peer-workers", type=int, default=len(os.sched_getaffinity(0)),
        help="worker processes per peer (default: one per usable core, as their docs recommend)",
    )  # fmt: skip
    p.add_argument(
        "--rounds",
        type=int,
        help="times each level runs per target, targets taking turns (default 1; --peers: 3)",
    )
    p.add_argument(
        "--no-freeze", dest="freeze", action="store_false",
        help="leave every target running while another is measured (default: SIGSTOP those that burn CPU "
        "while idle)",
    )  # fmt: skip
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
        choices=["httpx", "raw", "wrk"],
        help="load generator: httpx, a minimal asyncio HTTP/1.1 client that costs the shared CPU far less "
        "(raw), or wrk -t1 (default httpx; with --peers: wrk when installed, else raw)",
    )
    p.add_argument("--workers", type=int, help="vae-serve --workers (default: the service's own choice)")
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
    peers = args.peers is not None
    if peers and not args.peers:
        args.peers = list(PEERS)
    args.peers = args.peers or []
    if args.scenarios is None:
        args.scenarios = ["decode1_b64"] if peers else [n for n in SCENARIOS if not SCENARIOS[n].peers]
    if args.concurrency is None:
        args.concurrency = [1, 64] if peers or args.quick else [1, 8, 64, 128]
    if args.client is None:
        args.client = ("wrk" if wrk_available() else "raw") if peers else "httpx"
    if args.client == "wrk" and not wrk_available():
        p.error("--client wrk: wrk is not installed (apt-get install wrk)")
    args.rounds = args.rounds or (3 if peers else 1)
    if args.quick:
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
            return finish(report, out)
        name = args.model or default_model(models_dir)
        from vae_contract.manifest import model_dir

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
            if not args.only_soak:
                for peer in args.peers:
                    python = ensure_venv(PEERS[peer])
                    servers.append(peer_server(PEERS[peer], python, info.path, args.peer_workers, out))
            for server in servers:  # all start at once; startup is mostly imports and model loading
                server.launch()
            for server in servers:
                server.wait_ready()
                print(f"[bench] {server.name} ready on {server.url}", flush=True)
            if servers[0].name == "ours":
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    report["service_models"] = httpx.get(f"{servers[0].url}/v1/models", timeout=10).json()
                servers[0].config = describe_ours(report.get("service_models"), args)
            for server in servers:  # who burns CPU while idle (frozen between its turns, unless --no-freeze)
                idle = server.idle_cores(1.0)
                server.freezable = idle > IDLE_CORES_FREEZE
                if server.freezable and args.freeze:
                    server.config += f" (idles at {idle:.2f} of a core: frozen while others are measured)"
            report["servers"] = {s.name: s.config for s in servers}
            if not args.only_soak:
                targets = [s for s in servers if s.name in args.targets or s.name in args.peers]
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
    report["summary"] = summarize_rounds(report["rows"])
    report["targets"] = judge(report["summary"], raw_limits, report.get("soak"), args.peers)
    return finish(report, out)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
