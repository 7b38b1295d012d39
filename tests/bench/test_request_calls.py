"""bench.request_calls serves decodes through uvicorn in process and counts the server's Python calls."""

from __future__ import annotations

import logging
import os

from bench import request_calls
from service.inference import batcher


def test_counts_calls_per_request_at_each_concurrency_and_restores_the_process(models_dir):
    handlers, env, alone = (
        logging.getLogger().handlers[:],
        os.environ.get("VAE_MODELS_DIR"),
        batcher.ALONE_INLINE_S,
    )
    argv = ["--models-dir", str(models_dir), "--concurrency", "1", "2", "--requests", "4", "--warmup", "1"]
    report = request_calls.main(argv)
    rows = report["python_calls_per_request"]
    assert set(rows) == {"c=1", "c=2"}
    assert all(calls > 50 for calls in rows.values())  # a request through the whole stack, not an empty loop
    assert logging.getLogger().handlers == handlers and os.environ.get("VAE_MODELS_DIR") == env
    assert alone == batcher.ALONE_INLINE_S
