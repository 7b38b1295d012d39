"""Python calls per request through the real server: uvicorn, the connection guard, the app, one process.

`bench.hot_path_ab` counts the app alone; this counts everything the server's event loop runs for a
one-latent decode: the HTTP protocol and its timers, the middlewares and the disconnect listener, the route,
the batcher (as a lone request with one connection, queued and batched with more) and the response write.
The server runs in this process on a thread of its own, cProfile on that thread only, the clients in a child
process (on keep-alive connections, each sending its next request once its answer is in), so the count
holds the server's work and nothing else. Counts move far less with a neighbour's load than any time does:
on a busy host they are the number to compare two builds with, and they are the same under load as when quiet.
A lone request's call goes on the event loop whatever it measures (a busy host's slow outlier would otherwise
hop to the thread now and then), so c=1 counts repeat exactly.

    python -m bench.request_calls --models-dir <dir with only models/mnist> --concurrency 1 64
    python -m bench.request_calls --loop asyncio   # the loop's own calls too (under uvloop they are C)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.servers import ROOT, free_port

# The clients: `concurrency` keep-alive connections, `n // concurrency` requests each, per line read on stdin.
_CLIENTS = r"""
import asyncio, sys
port, request, concurrency = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])

async def connection(count):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                      if k.lower() == b"content-length")
        await reader.readexactly(length)
    writer.close()

async def main(n):
    await asyncio.gather(*(connection(n // concurrency) for _ in range(concurrency)))

for line in sys.stdin:
    asyncio.run(main(int(line)))
    print("done", flush=True)
"""


def _request(latent_dim: int) -> bytes:
    z = np.random.default_rng(1).standard_normal(latent_dim).round(5).tolist()
    body = json.dumps({"latents": [z]}).encode()
    head = "POST /v1/decode HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: "
    return head.encode() + str(len(body)).encode() + b"\r\n\r\n" + body


def _serve(args: argparse.Namespace, port: int) -> tuple[Any, asyncio.AbstractEventLoop, threading.Thread]:
    import uvicorn

    from service.inference import batcher
    from service.logs import configure_logging
    from service.server.connections import GuardedHttpToolsProtocol

    batcher.ALONE_INLINE_S = float("inf")  # see the module doc: c=1 counts repeat exactly
    configure_logging("info")  # the access line is part of every request's cost; written to /dev/null
    devnull = open(os.devnull, "w")  # noqa: SIM115 (for the process's lifetime)
    logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
    config = uvicorn.Config(
        "service.main:create_app", factory=True, host="127.0.0.1", port=port, http=GuardedHttpToolsProtocol,
        log_config=None, access_log=False, server_header=False, proxy_headers=False, ws="none",
    )  # fmt: skip
    server = uvicorn.Server(config)
    if args.loop == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return server, loop, thread


def _run(clients: subprocess.Popen[str], n: int) -> None:
    """n requests from the clients, back once all are answered."""
    assert clients.stdin is not None and clients.stdout is not None
    clients.stdin.write(f"{n}\n")
    clients.stdin.flush()
    assert clients.stdout.readline().strip() == "done"


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    done = threading.Event()

    def call() -> None:
        fn()
        done.set()

    loop.call_soon_threadsafe(call)
    done.wait()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from service.inference import batcher

    # What this changes is restored after: a test may run it in its session.
    env = {
        "VAE_MODELS_DIR": str(args.models_dir.resolve()), "VAE_PROVIDER": "cpu", "VAE_GRPC_PORT": "0",
        "VAE_RELOAD_INTERVAL_S": "0",
    }  # fmt: skip
    saved_env = {key: os.environ.get(key) for key in env}
    root = logging.getLogger()
    saved_logging, saved_alone = (root.handlers[:], root.level), batcher.ALONE_INLINE_S
    os.environ.update(env)
    try:
        return _measure(args)
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        root.handlers[:], level = saved_logging
        root.setLevel(level)
        batcher.ALONE_INLINE_S = saved_alone


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server, loop, thread = _serve(args, port)
    try:
        request = _request(server.config.loaded_app.state.registry.get(None).latent_dim)
        rows = {}
        for concurrency in args.concurrency:
            argv = [sys.executable, "-c", _CLIENTS, str(port), request.hex(), str(concurrency)]
            with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as clients:
                _run(clients, args.warmup * concurrency)
                n = args.requests // concurrency * concurrency
                profile = cProfile.Profile()
                _on_loop(loop, profile.enable)
                _run(clients, n)
                _on_loop(loop, profile.disable)
            calls: int = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
            rows[f"c={concurrency}"] = round(calls / n, 1)
    finally:
        server.should_exit = True
        thread.join(30)
    return {"loop": args.loop, "python_calls_per_request": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument("--requests", type=int, default=3200, help="requests counted per concurrency")
    p.add_argument("--warmup", type=int, default=20, help="requests per connection before counting")
    p.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="uvloop: as vae-serve runs"
    )
    report = measure(p.parse_args(argv))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
