"""The report: the machine a run happened on, and results.json / results.md (the tables docs/benchmarks.md
quotes).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from bench.scenarios import ROOT, SCENARIOS


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


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _summary_table(summary: list[dict]) -> list[str]:
    """Medians over rounds, when a level ran more than once per target (the per-round rows follow)."""
    if not summary or max(r["rounds"] for r in summary) < 2:
        return []
    lines = [
        f"Medians over {max(r['rounds'] for r in summary)} rounds (targets taking turns):",
        "",
        "| concurrency | target | req/s median | req/s min-max | p50 ms | p99 ms | server CPU ms/req "
        "| load 1m | errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in summary:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(
            f"| {r['concurrency']} | {r['target']} | {_fmt(r['requests_per_s'])} "
            f"| {_fmt(r['rps_min'], 0)}-{_fmt(r['rps_max'], 0)} | {_fmt(r['p50_ms'], 2)} "
            f"| {_fmt(r['p99_ms'], 2)} | {_fmt(r.get('server_cpu_ms_per_request'), 3)} "
            f"| {_fmt(r['loadavg_min'], 2)}-{_fmt(r['loadavg_max'], 2)} | {errors} |"
        )
    return [*lines, "", "Each round:", ""]


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
    if report.get("servers"):
        lines += ["", "Targets:", ""]
        lines += [f"- `{name}`: {config}" for name, config in report["servers"].items() if config]
    for name in report["scenarios"]:
        rows = [r for r in report["rows"] if r["scenario"] == name]
        lines += ["", f"**{SCENARIOS[name].title}**", ""]
        lines += _summary_table([r for r in report.get("summary", []) if r["scenario"] == name])
        if not rows:
            lines.append("(no results)")
        else:
            lines += [
                "| concurrency | round | target | req/s | items/s | p50 ms | p99 ms | server CPU ms/req "
                "| errors | load 1m | ours/naive req/s | ours/raw items/s |",
                "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
            ]
            for r in rows:
                errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
                if not r["ok"] and r.get("unfinished"):
                    errors += f"; none finished in the window ({r['unfinished']} in flight)"
                vs_naive = f"{r['vs_naive_rps']:.2f}x" if r.get("vs_naive_rps") is not None else ""
                vs_raw = f"{r['vs_raw_items']:.1%}" if r.get("vs_raw_items") is not None else ""
                lines.append(
                    f"| {r['concurrency']} | {r.get('round', 1)} | {r['target']} "
                    f"| {_fmt(r['requests_per_s'])} "
                    f"| {_fmt(r['items_per_s'])} | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} "
                    f"| {_fmt(r.get('server_cpu_ms_per_request'), 3)} | {errors} "
                    f"| {_fmt(r.get('loadavg_1m'), 2)} | {vs_naive} | {vs_raw} |"
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


def finish(report: dict, out: Path) -> dict:
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    (out / "results.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "results.md").write_text(text)
    print("\n" + text, flush=True)
    return report
