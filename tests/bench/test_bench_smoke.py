"""Smoke tests for the benchmark harness: it runs end to end and reports sane fields. No timing thresholds.

Throughput is measured by `make bench` (bench/run.py), never asserted here (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from importlib.util import find_spec

import httpx
import pytest

from bench import run as bench_run
from bench.load import RequestSpec, run_load_sync, summarize
from bench.naive_app import create_app
from bench.raw import RawModel, measure
from bench.scenarios import SCENARIOS, model_info


def test_summarize_counts_errors_and_orders_percentiles():
    latencies = [0.001 * (i + 1) for i in range(100)] + [0.5, 0.5]
    statuses = ["200"] * 100 + ["503", "ReadTimeout"]
    result = summarize(latencies, statuses, elapsed_s=2.0, concurrency=4, items_per_request=8)
    assert result.requests == 102 and result.ok == 100
    assert result.errors == {"503": 1, "ReadTimeout": 1}
    assert result.requests_per_s == 50.0 and result.items_per_s == 400.0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms == 100.0  # errors excluded from latency


@pytest.fixture(scope="module")
def tiny(models_dir):
    raw = RawModel.open(models_dir / "tiny" / "1", "cpu")
    return model_info(models_dir, "tiny", raw), raw


def test_load_generator_drives_the_naive_app_in_process(tiny):
    info, _ = tiny
    transport = httpx.ASGITransport(app=create_app(info.path))
    for name in ("decode1_png", "decode256_npy", "encode1", "sample"):
        scenario = SCENARIOS[name]
        specs = scenario.build("naive", info)
        result = run_load_sync(
            "http://naive",
            specs,
            concurrency=3,
            total=3,
            items_per_request=scenario.items,
            transport=transport,
        )
        assert (result.requests, result.ok, result.errors) == (3, 3, {}), name
        assert result.items_per_s == pytest.approx(result.requests_per_s * scenario.items, rel=0.01)
        assert 0 < result.p50_ms <= result.p99_ms and result.bytes_received > 0


def test_load_generator_counts_error_statuses(tiny):
    info, _ = tiny
    transport = httpx.ASGITransport(app=create_app(info.path))
    bad = [RequestSpec("POST", "/v1/decode", b'{"latents": "nope"}', {"content-type": "application/json"})]
    result = run_load_sync("http://naive", bad, concurrency=2, total=4, transport=transport)
    assert result.ok == 0 and result.errors == {"422": 4} and result.p50_ms is None


def test_raw_measures_items_per_second(tiny):
    _, raw = tiny
    row = measure(raw, "decoder", 4, duration_s=0.05)
    assert row["items_per_s"] == pytest.approx(row["calls_per_s"] * 4, rel=1e-3) and row["items_per_s"] > 0


def _run(models_dir, tmp_path, targets):
    argv = [
        "--models-dir", str(models_dir), "--model", "tiny", "--out", str(tmp_path), "--targets", *targets,
        "--scenarios", "decode1_png", "decode256_npy", "--concurrency", "2", "--requests", "4",
        "--warmup", "1", "--client", "raw",
        "--raw-duration", "0.05",
    ]  # fmt: skip
    report = bench_run.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == report["rows"] and (tmp_path / "results.md").read_text().startswith("Machine:")
    assert set(report["raw"]) == {"decoder_b1", "decoder_b256"}
    assert report["failures"] == {}
    assert {(r["scenario"], r["target"]) for r in report["rows"]} == {
        (s, t) for s in ("decode1_png", "decode256_npy") for t in targets
    }
    for row in report["rows"]:
        assert row["ok"] == 4 and row["errors"] == {} and row["requests_per_s"] > 0
        assert row["server_cpu_ms_per_request"] >= 0 and row["p50_ms"] <= row["p99_ms"]
    return report


def test_full_run_reports_rows_ratios_and_targets(models_dir, tmp_path):
    """A real run on loopback (raw client): the service (when it exists) and the naive app as subprocesses."""
    with_service = find_spec("service.cli") is not None
    report = _run(models_dir, tmp_path, ["ours", "naive"] if with_service else ["naive"])
    if not with_service:
        assert report["targets"] == []  # nothing to compare without the service
        return
    ours = [r for r in report["rows"] if r["target"] == "ours"]
    assert all(r["vs_naive_rps"] > 0 and r["vs_raw_items"] > 0 for r in ours)
    assert [v["target"].split(":")[0] for v in report["targets"]] == [
        "/v1/decode 1 latent -> PNG at concurrency 2",
        "/v1/decode 256 latents -> npy",
    ]
    assert all(isinstance(v["pass"], bool) for v in report["targets"])
