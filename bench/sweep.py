"""The measurements: raw onnxruntime calls, one sweep over scenarios x concurrency x targets, the ratios
between them, the issue's targets judged from one run's numbers, and the memory soak.
"""

from __future__ import annotations

import os
import time

import httpx

from bench.load import RequestSpec, run_load_sync
from bench.peers import PEERS
from bench.raw import RawModel, measure
from bench.scenarios import DECODE_BATCH, SCENARIOS, ModelInfo, Scenario
from bench.servers import Server
from bench.wrk import run_wrk

# The targets (benchmark, not tests).
TARGET_NAIVE_RATIO, TARGET_NAIVE_CONCURRENCY = 2.0, 64
TARGET_RAW_FRACTION = 0.9
TARGET_RSS_GROWTH_MB = 50.0
TARGET_PEER_RATIO, TARGET_PEER_CONCURRENCY = 1.5, 64
TARGET_STABLE_SPREAD = 0.15
TARGET_CPU_MS_PER_REQUEST = 0.25


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
    if args.client == "wrk" and not args.requests:  # wrk runs for a duration, one prepared request
        result = run_wrk(
            server.url, specs[0], concurrency=concurrency, duration_s=args.duration,
            warmup_s=min(1.0, args.duration), items_per_request=items, server_cpu=server.cpu_seconds,
        )  # fmt: skip
        row = result.to_dict()
        row["settle_s"] = server.wait_idle()
        return row
    load = {"total": args.requests} if args.requests else {"duration_s": args.duration}
    result = run_load_sync(
        server.url,
        specs,
        concurrency=concurrency,
        warmup=args.warmup if args.warmup is not None else max(2 * concurrency, 8),
        warmup_s=None if args.requests else min(2.0, args.duration),
        items_per_request=items,
        server_cpu=server.cpu_seconds,
        client="raw" if args.client == "wrk" else args.client,
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
        for server in servers:
            server.resume()  # every target answers its probe
        serving = [s for s in servers if scenario.peers or s.name not in PEERS]
        pools = {s.name: scenario.build(s.name, info) for s in serving}
        live = []
        for server in serving:
            problem = probe(server, scenario, pools[server.name], info)
            if problem:
                failures[f"{name}/{server.name}"] = problem
                print(f"[bench] {name} on {server.name}: SKIPPED: {problem}", flush=True)
            else:
                live.append(server)
        for concurrency in args.concurrency:
            for rnd in range(args.rounds):
                # Targets take turns, and the order flips every round, so drifting load hits all alike.
                for server in live if rnd % 2 == 0 else live[::-1]:
                    _take_turn(server, servers, getattr(args, "freeze", True))
                    row = {"scenario": name, "target": server.name, "round": rnd + 1}
                    row.update(drive(server, pools[server.name], scenario.items, concurrency, args))
                    row["loadavg_1m"] = round(os.getloadavg()[0], 2)
                    rows.append(row)
                    _print_row(name, concurrency, server.name, row)
    for server in servers:
        server.resume()
    return rows, failures


def _take_turn(active: Server, servers: list[Server], freeze: bool) -> None:
    """The targets that burn CPU while idle wait frozen while another one is measured (see Server.pause).

    Only those: a frozen, resumed naive app (onnxruntime's default spinning thread pool) came back at a
    fifth of its speed, so well-behaved servers are left alone.
    """
    active.resume()
    if freeze:
        for other in servers:
            if other is not active and other.freezable:
                other.pause()


def _print_row(name: str, concurrency: int, target: str, row: dict) -> None:
    print(
        f"[bench] {name:14s} c={concurrency:<4d} {target:8s} "
        f"{row['requests_per_s']:9.1f} req/s {row['items_per_s']:11.1f} items/s  "
        f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
        f"server {row['server_cpu_ms_per_request']} CPU-ms/req client {row['client_cpu_s']} CPU-s"
        + (f"  errors {row['errors']}" if row["errors"] else "")
        + (f"  cut off {row['unfinished']}" if row["unfinished"] else ""),
        flush=True,
    )


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
    """In place: ours/naive requests/s at the same scenario, concurrency and round, and ours/raw items/s."""
    naive = {(r["scenario"], r["concurrency"], r.get("round")): r for r in rows if r["target"] == "naive"}
    for r in rows:
        if r["target"] != "ours":
            continue
        base = naive.get((r["scenario"], r["concurrency"], r.get("round")))
        r["vs_naive_rps"] = (
            round(r["requests_per_s"] / base["requests_per_s"], 2) if base and base["ok"] else None
        )
        limit = raw_limits.get(raw_key(r["scenario"]))
        r["vs_raw_items"] = round(r["items_per_s"] / limit["items_per_s"], 4) if limit else None


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 3)


def summarize_rounds(rows: list[dict]) -> list[dict]:
    """Per (scenario, concurrency, target): medians over the rounds, with the req/s and load ranges."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["concurrency"], r["target"]), []).append(r)
    summary = []
    for (scenario, concurrency, target), group in groups.items():
        rps = [r["requests_per_s"] for r in group]
        errors: dict[str, int] = {}
        for r in group:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        loads = [r["loadavg_1m"] for r in group if r.get("loadavg_1m") is not None]
        summary.append({
            "scenario": scenario, "concurrency": concurrency, "target": target, "rounds": len(group),
            "ok": all(r["ok"] for r in group),
            "requests_per_s": _median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "items_per_s": _median([r["items_per_s"] for r in group]),
            "p50_ms": _median([r["p50_ms"] for r in group]), "p99_ms": _median([r["p99_ms"] for r in group]),
            "server_cpu_ms_per_request": _median([r.get("server_cpu_ms_per_request") for r in group]),
            "vs_naive_rps": _median([r.get("vs_naive_rps") for r in group]),
            "vs_raw_items": _median([r.get("vs_raw_items") for r in group]),
            "errors": errors,
            "loadavg_min": min(loads) if loads else None, "loadavg_max": max(loads) if loads else None,
        })  # fmt: skip
    return summary


def judge(summary: list[dict], raw_limits: dict, soak: dict | None, peers: list[str] = ()) -> list[dict]:
    """The issue's targets, pass/fail, from this run's numbers (medians over rounds)."""
    verdicts = []
    by = {(r["scenario"], r["target"], r["concurrency"]): r for r in summary}

    def closest(scenario: str, level: int) -> int | None:
        levels = sorted({r["concurrency"] for r in summary if r["scenario"] == scenario})
        return min(levels, key=lambda lvl: abs(lvl - level)) if levels else None

    c = closest("decode1_png", TARGET_NAIVE_CONCURRENCY)
    if c is not None:
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
    ours256 = [r for r in summary if r["scenario"] == "decode256_npy" and r["target"] == "ours" and r["ok"]]
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
    verdicts += _judge_peers(by, closest, peers)
    if soak:
        verdicts.append({
            "target": f"RSS flat within {TARGET_RSS_GROWTH_MB:g} MB over 100k requests",
            "measured": f"{soak['growth_mb']:+.1f} MB over {soak['requests']} requests "
            f"({soak['rss_mb'][0]:.0f} -> {soak['rss_mb'][-1]:.0f} MB)",
            "pass": abs(soak["growth_mb"]) <= TARGET_RSS_GROWTH_MB and soak["requests"] >= 100_000,
        })  # fmt: skip
    return verdicts


def _judge_peers(by: dict, closest, peers) -> list[dict]:
    """Against the best peer in the one scenario they all serve; stability and CPU per request of ours."""
    verdicts: list[dict] = []
    name = "decode1_b64"
    high, low = closest(name, TARGET_PEER_CONCURRENCY), closest(name, 1)
    if high is None or low is None:
        return verdicts

    def rows(c: int) -> tuple[dict | None, list[dict]]:
        theirs = [r for p in peers if (r := by.get((name, p, c))) and r["ok"]]
        return by.get((name, "ours", c)), theirs

    ours, theirs = rows(high)
    if ours and ours["ok"] and theirs:
        best = max(theirs, key=lambda r: r["requests_per_s"])
        ratio = ours["requests_per_s"] / best["requests_per_s"]
        verdicts.append({
            "target": f"{name} at c={high}: >= {TARGET_PEER_RATIO:g}x the best peer's req/s, lower p99",
            "measured": f"{ratio:.2f}x {best['target']} ({ours['requests_per_s']:.0f} vs "
            f"{best['requests_per_s']:.0f} req/s); p99 {ours['p99_ms']:.1f} vs {best['p99_ms']:.1f} ms",
            "pass": ratio >= TARGET_PEER_RATIO and ours["p99_ms"] < best["p99_ms"],
        })  # fmt: skip
    ours1, theirs1 = rows(low)
    naive1 = by.get((name, "naive", low))
    others = theirs1 + ([naive1] if naive1 and naive1["ok"] else [])
    if ours1 and ours1["ok"] and others:
        best = min(others, key=lambda r: r["p50_ms"])
        verdicts.append({
            "target": f"{name} at c={low}: p50 no higher than the best peer's and the naive app's",
            "measured": f"{ours1['p50_ms']:.2f} ms vs {best['p50_ms']:.2f} ms ({best['target']})",
            "pass": ours1["p50_ms"] <= best["p50_ms"],
        })  # fmt: skip
    if ours and ours["ok"] and ours["rounds"] > 1:
        spread = (ours["rps_max"] - ours["rps_min"]) / ours["rps_max"]
        verdicts.append({
            "target": f"{name} at c={high}: rounds within {TARGET_STABLE_SPREAD:.0%} of each other",
            "measured": f"{ours['rps_min']:.0f}-{ours['rps_max']:.0f} req/s over {ours['rounds']} rounds "
            f"({spread:.0%})",
            "pass": spread <= TARGET_STABLE_SPREAD,
        })  # fmt: skip
    if ours and ours.get("server_cpu_ms_per_request") is not None:
        cpu = ours["server_cpu_ms_per_request"]
        verdicts.append({
            "target": f"server CPU per 1-latent decode request <= {TARGET_CPU_MS_PER_REQUEST:g} ms",
            "measured": f"{cpu:.3f} ms at c={high}",
            "pass": cpu <= TARGET_CPU_MS_PER_REQUEST,
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
