"""Provider choice: 'auto' asks onnxruntime for CUDA only where CUDA is usable, and says once what it chose.

The probe is tested on made-up hosts (which libraries load, which files the nvidia-* pip packages hold); the
startup log is tested on this one, in a fresh process loading the committed models as the service does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.inference import cuda, runtime

ROOT = Path(__file__).resolve().parents[2]
LINUX_LIBS = ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcudnn.so.9"]


def _host(*loadable: str):
    return lambda name: name in loadable


def test_a_cpu_build_of_onnxruntime_is_never_asked_for_cuda(tmp_path):
    found = cuda.probe(["CPUExecutionProvider"], tmp_path, _host(), windows=False)
    assert not found.usable and "has no CUDA provider" in found.reason


def test_no_driver_is_named_first(tmp_path):
    found = cuda.probe([cuda.CUDA_PROVIDER], tmp_path, _host(*LINUX_LIBS), windows=False)
    assert (found.usable, found.reason) == (False, "no NVIDIA driver (libcuda.so.1 not found)")
    on_windows = cuda.probe([cuda.CUDA_PROVIDER], tmp_path, _host(), windows=True)
    assert "nvcuda.dll not found" in on_windows.reason


def test_the_first_missing_library_is_named(tmp_path):
    # The partial install of this kind of dev machine: a driver and libcudart, no cuBLAS.
    found = cuda.probe(
        [cuda.CUDA_PROVIDER], tmp_path, _host("libcuda.so.1", "libcudart.so.13"), windows=False
    )
    assert not found.usable and found.reason.startswith("libcublasLt.so.13 not found")


def test_libraries_on_the_system_path_or_in_pip_packages(tmp_path):
    system = cuda.probe([cuda.CUDA_PROVIDER], tmp_path, _host("libcuda.so.1", *LINUX_LIBS), windows=False)
    assert system.usable and not system.pip_libraries and "system library path" in system.reason
    for folder, name in [("nvidia/cu13/lib", n) for n in LINUX_LIBS[:3]] + [
        ("nvidia/cudnn/lib", LINUX_LIBS[3])
    ]:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / name).touch()
    pip = cuda.probe([cuda.CUDA_PROVIDER], tmp_path, _host("libcuda.so.1"), windows=False)
    assert pip.usable and pip.pip_libraries and "nvidia-* pip packages" in pip.reason


def test_provider_lists_follow_the_probe():
    usable, absent = cuda.CudaStatus(True, "found"), cuda.CudaStatus(False, "libcuda.so.1 not found")
    both = [runtime.CUDA, runtime.CPU]
    assert runtime.requested_providers("cpu", both, usable) == [runtime.CPU]
    assert runtime.requested_providers("auto", both, absent) == [runtime.CPU]
    assert runtime.requested_providers("auto", [runtime.CPU], usable) == [runtime.CPU]
    assert runtime.requested_providers("auto", both, usable)[0][0] == runtime.CUDA
    assert runtime.requested_providers("cuda", [runtime.CPU], absent)[0][0] == runtime.CUDA  # fails loudly


LOAD = """
import asyncio, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from service.config import Settings
from service.inference import ModelRegistry
registry = ModelRegistry(Settings(models_dir=sys.argv[1], models=["mnist-2d"], provider=sys.argv[2]))
registry.load()
model = registry.models.get("mnist-2d")
print(json.dumps({"ready": registry.ready, "failures": registry.failures,
                  "providers": model.providers if model else None}))
asyncio.run(registry.close())
"""


def _load_in_a_fresh_process(provider: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(ROOT / "models"), provider],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.timeout(180)
def test_auto_logs_one_info_line_and_no_onnxruntime_errors():
    result, stderr = _load_in_a_fresh_process("auto")
    assert result["ready"], result
    lines = stderr.splitlines()
    choice = [ln for ln in lines if "onnxruntime provider:" in ln]
    assert len(choice) == 1 and choice[0].startswith("INFO service.inference.runtime"), stderr
    if cuda.probe().usable:
        assert "CUDAExecutionProvider (auto: NVIDIA driver" in choice[0]
        assert result["providers"][0] == "CUDAExecutionProvider"
    else:
        assert "CPUExecutionProvider (auto, CUDA is not usable here: " in choice[0]
        assert result["providers"] == ["CPUExecutionProvider"]
        # onnxruntime's own noise when asked for CUDA: "[E:onnxruntime:...]", preload_dlls' "Failed to load"
        assert not [ln for ln in lines if "ERROR" in ln or ":onnxruntime:" in ln or "Failed to load" in ln]


@pytest.mark.timeout(180)
def test_cuda_without_cuda_refuses_the_model_and_says_why():
    if cuda.probe().usable:
        pytest.skip("this host has a usable CUDA: 'cuda' serves on it (test_data_plane covers that)")
    result, _ = _load_in_a_fresh_process("cuda")
    assert not result["ready"]
    reason = result["failures"]["mnist-2d"]
    assert "CUDA was requested" in reason and "on this host: " in reason, reason
