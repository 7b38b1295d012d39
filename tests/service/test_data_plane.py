"""The data plane without HTTP: model loading and refusal, providers, and the maths behind each operation."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import numpy as np
import onnx_models
import onnxruntime as ort
import pytest

from service.errors import ModelNotFound, NotReady
from service.inference import ModelRegistry, runtime
from service.inference.model import draw_prior, reparameterize
from vae_contract.likelihoods import kl_to_prior, reconstruction_nll
from vae_contract.manifest import sha256_file

# Models built with onnx.helper, not trained: this file needs no torch.
models_dir, client = onnx_models.models_dir, onnx_models.client


def load(settings) -> ModelRegistry:
    registry = ModelRegistry(settings)
    registry.load()
    return registry


def close(registry: ModelRegistry) -> None:
    asyncio.run(registry.close())


def test_loads_every_model_and_picks_the_default(models_dir, settings_for):
    registry = load(settings_for(models_dir))
    try:
        assert registry.ready and sorted(registry.models) == ["tiny", "tiny-2d"]
        assert registry.default_name == "tiny"  # no "mnist" here: the first name alphabetically
        assert registry.get(None).name == "tiny" and registry.get("tiny-2d").latent_dim == 2
        with pytest.raises(ModelNotFound):
            registry.get("absent")
    finally:
        close(registry)
    only = load(settings_for(models_dir, models="tiny-2d", default_model="tiny-2d"))
    try:
        assert list(only.models) == ["tiny-2d"] and only.ready and only.get(None).name == "tiny-2d"
    finally:
        close(only)


def test_a_model_with_a_bad_hash_is_refused_and_readiness_is_false(model_copy, settings_for, caplog):
    with (model_copy / "tiny" / "1" / "decoder.onnx").open("ab") as fh:
        fh.write(b"tampered")
    with caplog.at_level(logging.ERROR):
        registry = load(settings_for(model_copy))
    try:
        assert not registry.ready
        assert "tiny" not in registry.models and "tiny-2d" in registry.models  # the good one still serves
        assert "sha256 mismatch" in registry.failures["tiny"]
        assert str(model_copy) not in registry.failures["tiny"]  # no host paths in what clients see
        assert any("tiny NOT loaded" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
        with pytest.raises(NotReady):
            registry.get("tiny")
    finally:
        close(registry)


def test_graph_names_and_shapes_must_match_the_manifest(model_copy, settings_for):
    path = model_copy / "tiny" / "1" / "model.json"
    manifest = json.loads(path.read_text())
    manifest["decoder"]["inputs"][0]["name"] = "latent"  # a valid manifest that disagrees with the graph
    path.write_text(json.dumps(manifest))
    registry = load(settings_for(model_copy, models="tiny"))
    try:
        assert not registry.ready and "disagree with the manifest" in registry.failures["tiny"]
    finally:
        close(registry)


def test_an_unloadable_graph_with_a_matching_hash_is_refused(model_copy, settings_for):
    folder = model_copy / "tiny" / "1"
    (folder / "encoder.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((folder / "model.json").read_text())
    manifest["encoder"]["sha256"] = sha256_file(folder / "encoder.onnx")
    (folder / "model.json").write_text(json.dumps(manifest))
    registry = load(settings_for(model_copy, models="tiny"))
    try:
        assert "onnxruntime cannot load it" in registry.failures["tiny"]
    finally:
        close(registry)


def test_missing_models_make_the_service_not_ready(tmp_path, models_dir, settings_for):
    empty = load(settings_for(tmp_path))
    assert not empty.ready and "no models" in empty.failures["*"]
    close(empty)
    named = load(settings_for(models_dir, models="tiny,ghost"))
    try:
        assert not named.ready and "ghost" in named.failures and named.get("tiny")
    finally:
        close(named)


def test_provider_requests():
    cuda, cpu = runtime.CUDA, runtime.CPU
    assert runtime.requested_providers("cpu", [cuda, cpu]) == [cpu]
    assert runtime.requested_providers("auto", [cpu]) == [cpu]
    auto = runtime.requested_providers("auto", [cuda, cpu], runtime.cuda.CudaStatus(True, "libraries found"))
    assert auto[0][0] == cuda and auto[-1] == cpu
    assert runtime.requested_providers("cuda", [cpu])[0][0] == cuda  # asked for, so the failure is explicit


def test_cuda_mode_refuses_a_model_that_is_not_on_cuda(models_dir, settings_for):
    registry = load(settings_for(models_dir, models="tiny", provider="cuda"))
    try:
        if "tiny" in registry.models:  # a host with a working CUDA provider
            assert "CUDAExecutionProvider" in registry.models["tiny"].providers
        else:
            assert "CUDA was requested" in registry.failures["tiny"] and not registry.ready
    finally:
        close(registry)


def test_auto_mode_reports_a_silent_cpu_fallback(models_dir, settings_for, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "_cuda_fell_back", False)
    # As if the libraries were all there, so that 'auto' asks onnxruntime for CUDA even on a CPU host.
    monkeypatch.setattr(runtime.cuda, "status", lambda: runtime.cuda.CudaStatus(True, "assumed usable"))
    with caplog.at_level(logging.WARNING):
        registry = load(settings_for(models_dir, models="tiny", provider="auto"))
    try:
        model = registry.models["tiny"]
        listed = "CUDAExecutionProvider" in ort.get_available_providers()
        if listed and "CUDAExecutionProvider" not in model.providers:
            assert any("CUDA was requested" in r.getMessage() for r in caplog.records)
        assert model.providers[-1] == "CPUExecutionProvider"
    finally:
        close(registry)


def test_io_binding_path_gives_the_same_outputs(models_dir, settings_for):
    """The CUDA path binds inputs and outputs; exercise the same code on the CPU device here."""
    registry = load(settings_for(models_dir, models="tiny"))
    try:
        graph = registry.models["tiny"].decoder
        z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
        plain = graph.run(z)
        graph.bind_device = "cpu"
        bound = graph.run(z)
        np.testing.assert_array_equal(bound[0], plain[0])
    finally:
        close(registry)


def test_session_options_are_explicit():
    opts = runtime.session_options(intra_op_threads=2, inter_op_threads=1)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # The CPU arena would keep each session's largest run for its life: off unless asked for.
    assert not opts.enable_cpu_mem_arena and opts.enable_mem_pattern
    assert runtime.session_options(1, 1, cpu_arena=True).enable_cpu_mem_arena


def test_cuda_options_bound_memory_per_session():
    options = runtime.cuda_options(gpu_mem_limit_mb=512)
    assert options["gpu_mem_limit"] == 512 * 1024 * 1024
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["cudnn_conv_use_max_workspace"] == "0"
    assert "gpu_mem_limit" not in runtime.cuda_options()  # 0: no cap


# --- maths -------------------------------------------------------------------------------------------------


def test_prior_draws_are_seeded_and_scaled():
    a, b = draw_prior(4, 3, seed=1), draw_prior(4, 3, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_prior(4, 3, seed=2))
    np.testing.assert_allclose(draw_prior(4, 3, seed=1, temperature=0.5), 0.5 * a, rtol=1e-6)
    assert a.dtype == np.float32 and a.shape == (4, 3)


def test_reparameterize_matches_its_formula():
    mean = np.array([[0.0, 1.0], [2.0, -1.0]], np.float32)
    log_var = np.array([[0.0, math.log(4.0)], [-2.0, 0.5]], np.float32)
    eps = np.random.default_rng(5).standard_normal((2, 2), dtype=np.float32)
    np.testing.assert_allclose(reparameterize(mean, log_var, 5), mean + np.exp(log_var / 2) * eps, rtol=1e-6)


def test_kl_matches_the_closed_form_and_a_monte_carlo_estimate():
    assert kl_to_prior(np.zeros((1, 5)), np.zeros((1, 5)))[0] == 0.0
    mean, log_var = np.array([[0.5, -1.0]]), np.array([[-0.3, 0.4]])
    rng = np.random.default_rng(0)
    std = np.exp(log_var / 2)
    z = mean + std * rng.standard_normal((200_000, 2))
    log_q = (-0.5 * (((z - mean) / std) ** 2) - np.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    assert abs(kl_to_prior(mean, log_var)[0] - (log_q - log_p).mean()) < 0.01


def test_reconstruction_nll_bernoulli_and_gaussian():
    x = np.array([[[[0.0, 1.0], [0.25, 1.0]]]], np.float32)  # (1, 1, 2, 2)
    p = np.array([[[[0.1, 0.9], [0.5, 1.0]]]], np.float32)
    expected = -(
        math.log(0.9) + math.log(0.9) + 0.25 * math.log(0.5) + 0.75 * math.log(0.5) + math.log(1 - 1e-7)
    )
    assert reconstruction_nll(x, p, "bernoulli", None)[0] == pytest.approx(expected, rel=1e-6)
    sigma = 0.2
    sq = ((x - p) ** 2).sum()
    gauss = sq / (2 * sigma**2) + 4 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert reconstruction_nll(x, p, "gaussian", sigma)[0] == pytest.approx(gauss, rel=1e-6)
