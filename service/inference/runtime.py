"""onnxruntime sessions: explicit options, provider choice, and graphs checked against their manifest.

A CUDA execution provider that fails to load (missing CUDA 13 / cuDNN 9 libraries, no device) makes
onnxruntime fall back to CPU with nothing but a log line, so every session's *active* providers are read back
with `session.get_providers()` and compared with what was asked for. 'auto' asks for CUDA only where
service.inference.cuda finds it usable, and says once which provider it chose and why.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import InferenceFailed
from service.inference import cuda
from service.inference.limits import check_finite_outputs
from service.inference.shapes import pad_rows, padded_size
from vae_contract.manifest import GraphSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

ProviderList = list[str | tuple[str, dict[str, Any]]]

# Set once a session asked for CUDA in 'auto' mode and got CPU: later sessions in this process go straight to
# CPU instead of repeating the failed load (and its log noise) for every graph.
_cuda_fell_back = False


class ModelLoadError(Exception):
    """A model that cannot be served; the message says why and is logged and shown on /readyz."""


def session_options(
    intra_op_threads: int, inter_op_threads: int, cpu_arena: bool = False
) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # Constant folding, node fusion and layout changes; the exported graphs are fixed, so optimise them fully.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The graphs are chains of layers: nothing to run in parallel between nodes, so sequential mode and one
    # inter-op thread. Parallelism comes from intra-op threads and from batching requests together.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = inter_op_threads
    opts.intra_op_num_threads = intra_op_threads  # 0: onnxruntime's default, one per physical core
    # The CPU arena keeps the largest run's buffers for the life of the session, and a worker holds a dozen
    # sessions: with it, one worker serving the default models idled at 1.6 GB (bench/memory.py); without,
    # buffers go back to malloc after each run, at no measurable cost per request (docs/benchmarks.md).
    opts.enable_cpu_mem_arena = cpu_arena
    # Plan each run's buffers once per input shape and allocate them as one block (less fragmentation of
    # the heap than one allocation per tensor when the arena is off: ~60 MB less idle RSS after warm-up).
    opts.enable_mem_pattern = True
    # Idle intra-op threads otherwise spin for a while after each run, burning the cores that the event loop
    # needs for HTTP, JSON and PNG work between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only; our own log line reports the providers in use
    return opts


def cuda_options(gpu_mem_limit_mb: int = 0) -> dict[str, Any]:
    options: dict[str, Any] = {
        # Grow the CUDA arena by what is asked for, not by powers of two: a batch-size sweep would otherwise
        # reserve far more device memory than the model needs.
        "arena_extend_strategy": "kSameAsRequested",
        # Cheap algorithm choice per convolution shape; batches are padded to a few sizes on CUDA (each
        # warmed at load), so this runs a handful of times per graph, never per request.
        "cudnn_conv_algo_search": "HEURISTIC",
        # cuDNN's workspace sized per convolution, not "as much as helps": several worker processes share
        # one card, each with its own workspace.
        "cudnn_conv_use_max_workspace": "0",
    }
    # The worker's share of its card (service.server.workers): no arena grows beyond it.
    if gpu_mem_limit_mb > 0:
        options["gpu_mem_limit"] = gpu_mem_limit_mb * 1024 * 1024
    return options


def requested_providers(
    mode: str,
    available: Sequence[str],
    cuda_here: cuda.CudaStatus | None = None,
    gpu_mem_limit_mb: int = 0,
) -> ProviderList:
    """The provider list for a session. 'auto' asks for CUDA only when `cuda.status()` finds it usable, so a
    CPU host never sees onnxruntime's errors about missing libraries; 'cuda' asks for it regardless, so its
    absence fails loudly (runtime.Graph refuses the model)."""
    if mode == "cpu":
        _log_choice(CPU, "VAE_PROVIDER=cpu")
        return [CPU]
    found = cuda.status() if cuda_here is None else cuda_here
    if mode == "auto":
        if _cuda_fell_back:
            return [CPU]
        if CUDA not in available or not found.usable:
            why = found.reason if CUDA in available else "onnxruntime lists no CUDA provider"
            _log_choice(CPU, f"auto, CUDA is not usable here: {why}")
            return [CPU]
        _log_choice(CUDA, f"auto: {found.reason}")
    if found.pip_libraries or mode == "cuda":
        _preload_cuda_libraries()
    return [(CUDA, cuda_options(gpu_mem_limit_mb)), CPU]


@functools.cache
def _log_choice(provider: str, why: str) -> None:
    """One line per process (not per graph) saying which provider sessions ask for and why."""
    log.info("onnxruntime provider: %s (%s)", provider, why)


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (onnxruntime-gpu[cuda,cudnn]) when they are there.

    onnxruntime looks for them only on the system library path; pip puts them in site-packages, where
    `preload_dlls` finds them. 'auto' calls it only when cuda.status() found them there (it prints a line per
    missing library otherwise); 'cuda' always does, as part of failing loudly.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # best effort: a missing library shows up as the CPU fallback, loudly, below
        log.info("onnxruntime.preload_dlls() did not load CUDA libraries: %s", _first_line(exc))


def _dims_match(manifest_shape: Sequence[int | str], ort_shape: Sequence[Any]) -> bool:
    if len(manifest_shape) != len(ort_shape):
        return False
    for want, got in zip(manifest_shape, ort_shape, strict=True):
        if want == "batch":
            if isinstance(got, int):  # a fixed batch size would break batching
                return False
        elif want != got:
            return False
    return True


class Graph:
    """One exported graph in one session, outputs returned in the manifest's order.

    A graph of several inputs (the sampler's `z` and `noise`) is run, and batched, as one array whose rows
    hold each input's row flattened, side by side in the manifest's order (`pack`): the batcher concatenates
    and splits rows of one array, so several inputs need nothing new from it."""

    def __init__(
        self,
        path: Path,
        spec: GraphSpec,
        options: ort.SessionOptions,
        mode: str,
        gpu_mem_limit_mb: int = 0,
    ):
        self.path = path
        self.name = path.stem  # what error messages call it; pathlib recomputes a stem on every access
        self.spec = spec
        available = ort.get_available_providers()
        requested = requested_providers(mode, available, gpu_mem_limit_mb=gpu_mem_limit_mb)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise ModelLoadError(f"{path.name}: onnxruntime cannot load it ({_first_line(exc)})") from exc
        self.providers: list[str] = list(self.session.get_providers())
        wants_cuda = any(p == CUDA or (isinstance(p, tuple) and p[0] == CUDA) for p in requested)
        self.on_cuda = CUDA in self.providers
        if wants_cuda and not self.on_cuda:
            message = (
                f"{path}: CUDA was requested but onnxruntime is running this session on {self.providers} "
                "(CUDA provider failed to load: check CUDA 13 / cuDNN 9 libraries and the device)"
            )
            if mode == "cuda":
                raise ModelLoadError(f"{message}; on this host: {cuda.status().reason}")
            global _cuda_fell_back
            _cuda_fell_back = True
            log.warning("!!! %s; serving on CPU (later sessions will not try CUDA again)", message)
        self._check_signature()
        self.input_name = spec.inputs[0].name
        # Each input's row shape and its width in a packed row (several inputs only).
        self.row_shapes = [tuple(int(d) for d in t.shape[1:]) for t in spec.inputs]
        self.row_sizes = [math.prod(shape) for shape in self.row_shapes]
        self.output_names = [t.name for t in spec.outputs]
        # Where I/O binding places inputs and outputs; None: plain run() (on CPU binding gains nothing).
        self.bind_device: str | None = "cuda" if self.on_cuda else None
        # The batch sizes calls run at (service.inference.shapes); None: each call at its own size.
        self.shapes: tuple[int, ...] | None = None

    def _check_signature(self) -> None:
        for kind, got, want in (
            ("inputs", self.session.get_inputs(), self.spec.inputs),
            ("outputs", self.session.get_outputs(), self.spec.outputs),
        ):
            got_sig = [(t.name, list(t.shape), t.type) for t in got]
            want_sig = [(t.name, t.shape, "tensor(float)") for t in want]
            names_ok = [g[0] for g in got_sig] == [w[0] for w in want_sig]
            types_ok = all(g[2] == w[2] for g, w in zip(got_sig, want_sig, strict=False))
            shapes_ok = len(got_sig) == len(want_sig) and all(
                _dims_match(w[1], g[1]) for g, w in zip(got_sig, want_sig, strict=True)
            )
            if not (names_ok and types_ok and shapes_ok):
                raise ModelLoadError(
                    f"{self.path.name}: graph {kind} {got_sig} disagree with the manifest {want_sig}"
                )
        if any(d == "batch" for t in self.spec.inputs for d in t.shape[1:]):
            raise ModelLoadError(f"{self.path.name}: only the first axis of an input may be the batch")

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One onnxruntime call on a batch; safe to call from several threads (sessions are thread-safe).

        With `shapes` set, the batch runs padded with zero rows to the next of those sizes, and only its own
        rows come back: every row of these graphs depends on its own input alone.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        if self.shapes is not None:
            x = pad_rows(x, padded_size(n, self.shapes))
        if len(self.row_shapes) > 1:
            outputs = self.session.run(self.output_names, self.unpack(x))
        elif self.bind_device is not None:
            outputs = self._run_bound(x, self.bind_device)
        else:
            outputs = self.session.run(self.output_names, {self.input_name: x})
        result = tuple(np.asarray(o) for o in outputs)
        if any(out.shape[:1] != x.shape[:1] for out in result):
            raise InferenceFailed()
        if len(x) != n:
            result = tuple(out[:n] for out in result)
        for out in result:
            # Inputs are checked finite and bounded, yet inputs inside the limits can still overflow a layer:
            # the request is outside the model's range, a client error (never NaN sent as an answer).
            check_finite_outputs(self.name, out)
        return result

    def pack(self, *inputs: np.ndarray) -> np.ndarray:
        """The inputs (each (n, ...)) as one (n, sum of row sizes) float32 array, the form `run` takes."""
        return np.concatenate([a.reshape(len(a), -1) for a in inputs], axis=1, dtype=np.float32)

    def unpack(self, x: np.ndarray) -> dict[str, np.ndarray]:
        bounds = np.cumsum([0, *self.row_sizes])
        return {
            t.name: np.ascontiguousarray(x[:, bounds[i] : bounds[i + 1]]).reshape(len(x), *self.row_shapes[i])
            for i, t in enumerate(self.spec.inputs)
        }

    def _run_bound(self, x: np.ndarray, device: str) -> list[np.ndarray]:
        # I/O binding: copy the batch to the device once, keep outputs on the device until one copy back,
        # instead of letting run() stage both through its own host buffers.
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, device, 0))
        for name in self.output_names:
            binding.bind_output(name, device, 0)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
