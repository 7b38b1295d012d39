"""Can onnxruntime's CUDA provider run here? Asked cheaply, before any session asks onnxruntime itself.

Asking onnxruntime for CUDA on a host without it works (it falls back to CPU) but prints red ERROR lines about
missing libraries, which read as a failure. So 'auto' looks first, the way the dynamic loader would: the
onnxruntime build has a CUDA provider; the NVIDIA driver library loads; the CUDA runtime, cuBLAS(Lt) and
cuDNN of the major versions this onnxruntime was built for are in the nvidia-* pip packages beside it
(`onnxruntime-gpu[cuda,cudnn]`) or load from the system library path. Loading a library does not initialise
CUDA, so this is safe before worker processes fork. No device query: with a driver present, onnxruntime is
asked and a failure there is reported as a fallback (runtime.Graph).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

CUDA_PROVIDER = "CUDAExecutionProvider"
CUDNN_MAJOR = "9"  # onnxruntime-gpu 1.2x-1.3x are built against cuDNN 9


@dataclass(frozen=True)
class CudaStatus:
    usable: bool
    reason: str  # for the log line: what was found, or the first thing missing
    pip_libraries: bool = False  # found in the nvidia-* pip packages: onnxruntime.preload_dlls() loads them


def _cuda_major() -> str:
    version = str(getattr(ort, "cuda_version", "") or "")
    return version.split(".", 1)[0] if version[:1].isdigit() else "13"


def _library_names(windows: bool, cuda: str) -> list[tuple[str, tuple[str, ...]]]:
    """(file name, folder inside site-packages) of each library the CUDA provider cannot start without."""
    if windows:
        arch = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"
        lib: tuple[str, ...] = ("nvidia", f"cu{cuda}", "bin", arch)
        return [
            (f"cudart64_{cuda}.dll", lib),
            (f"cublasLt64_{cuda}.dll", lib),
            (f"cublas64_{cuda}.dll", lib),
            (f"cudnn64_{CUDNN_MAJOR}.dll", ("nvidia", "cudnn", "bin")),
        ]
    lib = ("nvidia", f"cu{cuda}", "lib")
    return [
        (f"libcudart.so.{cuda}", lib),
        (f"libcublasLt.so.{cuda}", lib),
        (f"libcublas.so.{cuda}", lib),
        (f"libcudnn.so.{CUDNN_MAJOR}", ("nvidia", "cudnn", "lib")),
    ]


def _loads(name: str) -> bool:
    if sys.platform == "win32":
        # ctypes.CDLL no longer searches PATH on Windows, where the CUDA installer puts its DLLs and where
        # onnxruntime looks; find_library does search it.
        return ctypes.util.find_library(name) is not None
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def probe(
    available: list[str] | None = None,
    site_packages: Path | None = None,
    loads: Callable[[str], bool] = _loads,
    windows: bool | None = None,
) -> CudaStatus:
    """What 'auto' decides from; arguments are for tests (defaults: this process and this machine)."""
    available = ort.get_available_providers() if available is None else available
    if CUDA_PROVIDER not in available:
        return CudaStatus(False, f"this onnxruntime build ({_distribution()}) has no CUDA provider")
    windows = sys.platform == "win32" if windows is None else windows
    driver = "nvcuda.dll" if windows else "libcuda.so.1"
    if not loads(driver):
        return CudaStatus(False, f"no NVIDIA driver ({driver} not found)")
    site_packages = Path(ort.__file__).resolve().parents[1] if site_packages is None else site_packages
    cuda = _cuda_major()
    from_pip = []
    for name, folder in _library_names(windows, cuda):
        if (site_packages.joinpath(*folder) / name).is_file():
            from_pip.append(name)
        elif not loads(name):
            needs = f"onnxruntime {ort.__version__} needs CUDA {cuda} and cuDNN {CUDNN_MAJOR}"
            return CudaStatus(False, f"{name} not found ({needs})")
    where = "the nvidia-* pip packages" if from_pip else "the system library path"
    found = f"NVIDIA driver, CUDA {cuda} and cuDNN {CUDNN_MAJOR} found in {where}"
    return CudaStatus(True, found, pip_libraries=bool(from_pip))


@functools.cache
def status() -> CudaStatus:
    """probe() once per process: the libraries do not come and go while it runs."""
    return probe()


def _distribution() -> str:
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return "onnxruntime"
    return str(getattr(build_and_package_info, "package_name", "onnxruntime"))
