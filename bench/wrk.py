"""wrk as the load generator: `wrk -t1 -c<concurrency> -d<seconds>` with one prepared request per level.

wrk (C, epoll) costs the shared cores much less per request than any Python client, and is what the peers'
numbers in the throughput issue were measured with. A Lua `done` hook prints its summary as one JSON line, so
nothing is parsed from its human-readable output. Like the asyncio generator, it is closed-loop: each
connection sends its next request when the previous answer is in; requests in flight at the end are dropped.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.load import LoadResult, RequestSpec

_SCRIPT = """
wrk.method = %(method)s
local f = io.open(%(body)s, "rb"); wrk.body = f:read("*a"); f:close()
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %%d, "duration_us": %%d, "bytes": %%d, "status": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "timeout": %%d, "p50_us": %%f, "p99_us": %%f, "mean_us": %%f, "max_us": %%f}\\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for these characters


def _run(url: str, script: Path, concurrency: int, seconds: float) -> dict:
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
        "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"wrk printed no summary (exit {done.returncode}): {done.stderr[-500:]}")


def run_wrk(
    base_url: str,
    spec: RequestSpec,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    items_per_request: int = 1,
    server_cpu: Callable[[], float] | None = None,
) -> LoadResult:
    """One level: an uncounted warm-up run, then the timed one; the same fields as bench.load's results."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body, script = Path(tmp) / "body", Path(tmp) / "script.lua"
        body.write_bytes(spec.content)
        headers = "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in spec.headers.items())
        script.write_text(
            _SCRIPT % {"method": _lua(spec.method), "body": _lua(str(body)), "headers": headers}
        )
        url = base_url + spec.path
        if warmup_s > 0:
            _run(url, script, concurrency, warmup_s)
        server_start = server_cpu() if server_cpu else 0.0
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        summary = _run(url, script, concurrency, duration_s)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_used = server_cpu() - server_start if server_cpu else None
    elapsed = max(summary["duration_us"] / 1e6, 1e-9)
    errors = {k: summary[k] for k in ("status", "connect", "read", "write", "timeout") if summary[k]}
    if "status" in errors:
        errors["non-2xx"] = errors.pop("status")
    ok = max(0, summary["requests"] - errors.get("non-2xx", 0))
    result = LoadResult(
        concurrency=concurrency,
        requests=summary["requests"],
        ok=ok,
        errors=errors,
        elapsed_s=round(elapsed, 3),
        requests_per_s=round(ok / elapsed, 2),
        items_per_s=round(ok * items_per_request / elapsed, 2),
        p50_ms=round(summary["p50_us"] / 1000, 3) if ok else None,
        p99_ms=round(summary["p99_us"] / 1000, 3) if ok else None,
        mean_ms=round(summary["mean_us"] / 1000, 3) if ok else None,
        max_ms=round(summary["max_us"] / 1000, 3) if ok else None,
        bytes_received=summary["bytes"],
    )
    result.client_cpu_s = round(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3
    )  # wrk's own CPU, the child that just ended
    if server_used is not None and result.requests:
        result.server_cpu_ms_per_request = round(1000 * server_used / result.requests, 3)
    return result
