"""The smoke run's reading of the server log: one provider choice, and none of onnxruntime's CUDA errors."""

from __future__ import annotations

import pytest
from deploycheck import CheckError
from deploycheck.smoke import check_startup_log

CHOICE = (
    "INFO service.inference.runtime: onnxruntime provider: CPUExecutionProvider (auto, CUDA is not usable)"
)


def test_one_choice_per_worker_is_accepted(tmp_path, capsys):
    log = tmp_path / "server.log"
    log.write_text(
        f"12:00:01 {CHOICE}\n12:00:02 {CHOICE}\nINFO uvicorn.error: Application startup complete.\n"
    )
    check_startup_log(log)
    assert "CPUExecutionProvider (auto, CUDA is not usable)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        "\x1b[1;31m2026-12-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] FAIL\n",
        "Failed to load libcublasLt.so.13: cannot open shared object file\n",
        "INFO service.inference.runtime: onnxruntime provider: CUDAExecutionProvider (auto: found)\n",
    ],
)
def test_onnxruntime_errors_or_disagreeing_workers_fail(tmp_path, extra):
    log = tmp_path / "server.log"
    log.write_text(f"{CHOICE}\n{extra}")
    with pytest.raises(CheckError, match="startup log"):
        check_startup_log(log)


def test_no_choice_logged_fails(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("INFO uvicorn.error: Application startup complete.\n")
    with pytest.raises(CheckError, match=r"got \[\]"):
        check_startup_log(log)
