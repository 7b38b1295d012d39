"""bench/memory.py end to end on the tiny models: a real worker's idle and peak RSS, per model set. Sizes are
checked for sense (positive, peak at least idle), never against a budget: budgets are the benchmark's job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import memory

pytestmark = pytest.mark.timeout(180)


def test_peak_counter_resets_to_the_current_rss():
    pid = os.getpid()
    grown = bytearray(64 * 1024 * 1024)  # touch 64 MB so the peak sits above the RSS once freed
    grown[::4096] = b"x" * len(grown[::4096])
    del grown
    before = memory.status_kb(pid, "VmHWM")
    assert memory.reset_peak(pid)
    after = memory.status_kb(pid, "VmHWM")
    assert after <= before and after >= memory.status_kb(pid, "VmRSS") - 1024


def test_model_sets_name_every_loaded_version(models_dir: Path):
    sets = dict(memory.model_sets(models_dir, per_version=True, policy="latest:2"))
    assert sets["none"] == {"VAE_MODELS": memory.NO_MODEL} and sets["all"] == {}
    assert sets["tiny/1"]["VAE_VERSION_POLICY"] == "specific:1" and sets["tiny/1"]["VAE_MODELS"] == "tiny"
    assert "tiny-2d/1" in sets


def test_a_real_worker_reports_idle_and_peak_rss(models_dir: Path, tmp_path: Path):
    argv = ["--models-dir", str(models_dir), "--sets", "all", "none", "tiny-2d/1", "--per-version"]
    argv += ["--loads", "decode1", "mixed", "--concurrency", "2", "--duration", "0.5", "--settle", "0"]
    report = memory.main([*argv, "--out", str(tmp_path)])
    rows = {(r["models"], r["load"]): r for r in report["rows"]}
    assert set(rows) == {
        ("all", "decode1"), ("all", "mixed"), ("none", "idle"), ("tiny-2d/1", "decode1"),
        ("tiny-2d/1", "mixed"),
    }  # fmt: skip
    for (_models, load), row in rows.items():
        assert row["idle_mb"] > 20 and row["startup_hwm_mb"] >= row["idle_mb"] - 1
        if load != "idle":
            assert row["errors"] == {} and row["req_s"] > 0, row
            assert row["peak_mb"] >= row["idle_mb"] * 0.9
    assert rows[("none", "idle")]["idle_mb"] < rows[("all", "decode1")]["idle_mb"]
    assert "| ours | all | mixed |" in report["table"]
    assert (tmp_path / "memory.json").is_file()
