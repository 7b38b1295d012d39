"""bench.hot_path_ab runs both paths of one app and reports them side by side. No timing thresholds."""

from __future__ import annotations

from bench import hot_path_ab


def test_reports_both_paths_and_the_calls_the_hot_path_saves(models_dir):
    argv = ["--models-dir", str(models_dir), "--blocks", "2", "--block", "3", "--warmup", "1"]
    report = hot_path_ab.main(argv)
    hot, router = report["rows"]["hot"], report["rows"]["router"]
    assert hot["requests"] == router["requests"] == 6
    assert all(row[key] > 0 for row in (hot, router) for key in ("process_cpu_ms", "thread_cpu_ms"))
    # Calls are counted, not timed: the hot path skips the router and FastAPI's wrapper on every request.
    assert hot["python_calls"] < router["python_calls"]
    assert set(report["hot_over_router"]) == {"process_cpu_ms", "thread_cpu_ms", "python_calls"}
