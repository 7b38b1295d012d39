"""The hot path against the router in one process: CPU per one-latent decode through the app, no HTTP server.

One app, one event loop; blocks of requests alternately through the hot path (service.http.hot_path) and
through the router's matching and FastAPI's handler (the same app with its hot path switched off), the order
flipping every block, so a neighbour's load falls on both alike. CPU time of the process and of the event
loop's thread, per request, and the number of Python calls per request (cProfile, a second pass), which no
load moves.

    python -m bench.hot_path_ab --models-dir models --blocks 10 --block 50
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.servers import ROOT


def _request(body: bytes) -> tuple[dict[str, Any], bytes]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
        "root_path": "", "path": "/v1/decode", "raw_path": b"/v1/decode", "query_string": b"",
        "headers": headers, "state": {},
    }  # fmt: skip
    return scope, body


async def _one(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    """One request as an ASGI server makes it: the body, then a disconnect once the response is complete."""
    done, sent, status, out = asyncio.Event(), False, 0, bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.extend(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    await app({**scope, "headers": list(scope["headers"])}, receive, send)
    return status, bytes(out)


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from service.config import Settings
    from service.logs import configure_logging
    from service.main import create_app

    settings = Settings(models_dir=args.models_dir, provider="cpu", grpc_port=0, reload_interval_s=0)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # restored after: a test may run this in its session
    configure_logging(settings.log_level)  # the access log line is part of every request's cost
    with open(os.devnull, "w") as devnull:
        root.handlers[0].setStream(devnull)  # type: ignore[attr-defined]
        try:
            return await _compare(args, create_app(settings))
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


async def _compare(args: argparse.Namespace, app: Any) -> dict[str, Any]:
    from service.http.hot_path import hot_path_of

    async with app.router.lifespan_context(app):
        model = app.state.service.registry.get(args.model)
        z = np.random.default_rng(1).standard_normal(model.latent_dim).round(5).tolist()
        scope, body = _request(json.dumps({"latents": [z], "model": model.name}).encode())
        hot = hot_path_of(app)
        assert hot is not None, "this app has no hot path"
        paths = {"hot": True, "router": False}
        answers = set()
        for path in paths.values():
            hot.enabled = path
            answers.add(await _one(app, scope, body))
        assert len(answers) == 1 and next(iter(answers))[0] == 200, "the two paths answered differently"
        for _ in range(args.warmup):
            await _one(app, scope, body)
        cpu = {name: [0.0, 0.0] for name in paths}
        for b in range(args.blocks):
            for name in list(paths) if b % 2 == 0 else list(reversed(paths)):
                hot.enabled = paths[name]
                c0, t0 = time.process_time(), time.thread_time()
                for _ in range(args.block):
                    await _one(app, scope, body)
                cpu[name][0] += time.process_time() - c0
                cpu[name][1] += time.thread_time() - t0
        calls = {}
        for name, path in paths.items():
            hot.enabled = path
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.block):
                await _one(app, scope, body)
            profile.disable()
            calls[name] = pstats.Stats(profile).total_calls / args.block
        hot.enabled = True
    n = args.blocks * args.block
    rows = {
        name: {"process_cpu_ms": round(1000 * p / n, 4), "thread_cpu_ms": round(1000 * t / n, 4),
               "python_calls": round(calls[name], 1), "requests": n}
        for name, (p, t) in cpu.items()
    }  # fmt: skip
    keys = ("process_cpu_ms", "thread_cpu_ms", "python_calls")
    ratios = {key: round(rows["hot"][key] / rows["router"][key], 3) for key in keys}
    return {"model": model.name, "rows": rows, "hot_over_router": ratios}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--model", help="model name (default: the service's default)")
    p.add_argument("--blocks", type=int, default=10, help="blocks per path, alternating")
    p.add_argument("--block", type=int, default=50, help="requests per block")
    p.add_argument("--warmup", type=int, default=30)
    report = asyncio.run(_measure(p.parse_args(argv)))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
