"""bench/gpu_workers.py without a GPU: its requests, and the table it writes with the targets checked."""

from __future__ import annotations

import io
import json

import numpy as np

from bench import gpu_workers


def _target(workers: int, p50: float, c64: float, big: float) -> dict:
    serving = {"reason": f"{workers} worker(s)", "workers": workers}
    summary = {"c1_p50_ms": p50, "c1_p99_ms": 3 * p50, "c64_req_s": c64, "big_items_s": big}
    return {"workers": workers, "check": {"serving": serving}, "summary": summary}


def test_the_table_checks_the_targets_against_one_process_and_raw():
    report = {
        "host": {"gpu": "NVIDIA H100", "usable_cores": 16, "onnxruntime": "1.31.1"},
        "provider": "cuda", "command": "python -m bench.gpu_workers",
        "raw": {"items_per_s": {1: 6000.0, 1024: 1_000_000.0}},
        "targets": {
            "default plan": _target(16, 1.5, 30_000, 600_000), "one process": _target(1, 1.4, 2_000, 200_000),
        },
    }  # fmt: skip
    text = gpu_workers.table(report)
    assert "| default plan | 16 | 1.5 | 4.5 | 30,000 | 600,000 | - |" in text
    assert "15.00x (target (cores - 1) / 1.2 = 12.50x: met)" in text
    assert "batch 1024 over HTTP / raw = 60% (target 50%: met)" in text
    assert "p50 1.5 ms (target < 2 ms: met)" in text
    report["targets"]["default plan"]["summary"]["c64_req_s"] = 20_000
    assert "10.00x (target (cores - 1) / 1.2 = 12.50x: missed)" in gpu_workers.table(report)


def test_requests_are_the_cpu_benchmarks_decode_and_a_1024_latent_npy():
    small, big = gpu_workers.requests(32)
    body = json.loads(small[0].content)
    assert small[0].path == "/v1/decode" and np.array(body["latents"]).shape == (1, 32)
    assert big[0].headers["accept"] == "application/x-npy"
    assert np.load(io.BytesIO(big[0].content)).shape == (gpu_workers.BIG, 32)
