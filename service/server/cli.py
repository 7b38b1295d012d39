"""`vae-serve`: run the service under uvicorn.

Flags override `VAE_*` environment variables, which override the defaults in `service.config.Settings`. The
settings reach the app through the environment, so every worker process (`--workers N`) reads the same ones.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

from service.config import Settings

APP_FACTORY = "service.server.workers:create_worker_app"  # service.main.create_app, after per-worker setup

WORKER_HEALTHCHECK_S = 60

# Read here rather than by Settings: the worker count is decided before any worker (and its Settings) exists.
WORKERS_HELP = (
    "Worker processes (`--workers`); unset: chosen from the machine, one per usable core on a CPU host (with "
    "one onnxruntime thread each) and one per GPU on a GPU host. The choice and its reason are logged at "
    "startup and shown as `serving` on /v1/models."
)


def settings_epilog() -> str:
    """Every VAE_* variable with its default: the whole configuration, on `vae-serve --help`."""
    from service.config import shown_default

    rows = [(f"VAE_{name.upper()}", shown_default(f)) for name, f in Settings.model_fields.items()]
    rows.append(("VAE_WORKERS", "unset"))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {default}" for name, default in rows]
    return (
        "settings: every VAE_* environment variable and its default (a flag above overrides its variable);\n"
        "what each does and why its default: docs/settings.md (generated from service/config.py)\n"
        + "\n".join(lines)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve ONNX-exported VAEs over HTTP and gRPC (settings: VAE_* variables, listed below).",
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="bind address (VAE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (VAE_PORT, default 8000)")
    parser.add_argument("--models-dir", help="models/ folder (VAE_MODELS_DIR, default models)")
    parser.add_argument(
        "--workers", type=int,
        default=int(os.environ["VAE_WORKERS"]) if os.environ.get("VAE_WORKERS", "").isdigit() else None,
        help="worker processes (VAE_WORKERS; default: chosen from the machine, one per usable core, spread "
        "over the GPUs on a GPU host; the choice and its reason are logged and shown on /v1/models)",
    )  # fmt: skip
    parser.add_argument(
        "--provider", choices=["auto", "cuda", "cpu"], help="execution provider (VAE_PROVIDER)"
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log threshold (VAE_LOG_LEVEL)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        "VAE_HOST": args.host,
        "VAE_PORT": args.port,
        "VAE_MODELS_DIR": args.models_dir,
        "VAE_PROVIDER": args.provider,
        "VAE_LOG_LEVEL": args.log_level,
    }
    os.environ.update({key: str(value) for key, value in overrides.items() if value is not None})
    try:
        settings = Settings()  # validate once here, so a bad setting fails before any worker starts
    except ValidationError as exc:
        sys.exit(f"vae-serve: invalid settings:\n{exc}")
    if args.workers is not None and args.workers < 1:
        sys.exit("vae-serve: --workers must be at least 1")
    from service.server.workers import choose

    given_threads = settings.intra_op_threads if "VAE_INTRA_OP_THREADS" in os.environ else None
    given_limit = settings.gpu_mem_limit_mb if "VAE_GPU_MEM_LIMIT_MB" in os.environ else None
    plan = choose(args.workers, settings.provider, given_threads, gpu_mem_limit_mb=given_limit)
    # Every worker reads its settings from the environment: the thread count and the plan travel there too.
    os.environ.update(plan.environment())

    import uvicorn

    from service.lifecycle import graceful_server, graceful_timeout_s
    from service.logs import configure_logging
    from service.server.connections import GuardedHttpToolsProtocol, raise_fd_limit

    configure_logging(settings.log_level, settings.log_json)
    logging.getLogger("service.server.workers").info("serving plan: %s", plan.reason)
    raise_fd_limit(settings.max_connections)  # before any worker starts: they inherit the limit
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our handlers (plain or JSON, with request ids)
        access_log=False,  # service.http.middleware logs each request with its id
        # SIGTERM: /readyz goes 503 for VAE_DRAIN_S, then uvicorn stops listening and waits this long for
        # in-flight requests before the lifespan shutdown closes the models (service.lifecycle).
        timeout_graceful_shutdown=graceful_timeout_s(settings),
        proxy_headers=False,
        server_header=False,  # no "server: uvicorn" banner
        # Idle, header and body timeouts, a header size cap and a connection cap (VAE_IDLE_TIMEOUT_S, ...);
        # each worker reads them from the same VAE_* environment.
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=settings.idle_timeout_s,
        # With several workers uvicorn pings each one and kills it after this many seconds without an answer.
        # A spawned worker answers only once Python, numpy and FastAPI are imported: on a busy host that
        # takes longer than uvicorn's 5 s default, which then kills and respawns the workers in a loop.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        ws="none",  # no WebSocket routes: an Upgrade request never reaches a protocol without these limits
    )
    if plan.workers > 1:
        from service.server.workers import run_workers

        sys.exit(run_workers(uvicorn.Config(APP_FACTORY, factory=True, workers=plan.workers, **options)))
    server = graceful_server(uvicorn.Config(APP_FACTORY, factory=True, **options))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn re-raises SIGINT after shutting down
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


if __name__ == "__main__":
    main()
