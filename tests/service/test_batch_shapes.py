"""Batches padded to a few sizes: the sizes, the padding, and answers identical to unpadded ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.inference import ModelRegistry
from service.inference.shapes import batch_shapes, pad_rows, padded_size
from tests.service.serving import make_settings

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def test_batch_shapes_are_powers_of_two_up_to_the_largest_batch():
    assert batch_shapes(1) == (1,)
    assert batch_shapes(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert batch_shapes(100) == (1, 2, 4, 8, 16, 32, 64, 100)  # the largest batch itself, not 128
    sizes = [padded_size(n, batch_shapes(100)) for n in (1, 2, 3, 5, 64, 65, 100)]
    assert sizes == [1, 2, 4, 8, 64, 100, 100]


def test_pad_rows_appends_zero_rows_and_keeps_the_given_ones():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = pad_rows(x, 4)
    assert padded.shape == (4, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:3], x)
    np.testing.assert_array_equal(padded[3], [0.0, 0.0])
    assert pad_rows(x, 3) is x


def _registry(padding: str, models: str, version: int) -> ModelRegistry:
    settings = make_settings(
        ROOT / "models", models=models, version_policy=f"specific:{version}", batch_padding=padding,
        max_batch_size=16,
    )  # fmt: skip
    registry = ModelRegistry(settings)
    registry.load()
    assert registry.ready, registry.failures
    return registry


def _rows(outputs: tuple[np.ndarray, ...], n: int) -> list[np.ndarray]:
    return [out[:n] for out in outputs]


@pytest.mark.parametrize(("name", "version"), [("mnist", 2), ("emoji", 4)])
def test_padding_never_leaks_into_answers(name: str, version: int):
    """Every graph at batch sizes that pad (3 -> 4, 5 -> 8, 9 -> 16) and one split by max_batch_size
    (20 -> 16 + 4), padding forced on against off:

    - exactly the rows onnxruntime gives for a batch of the padded size whose extra rows hold anything else
      (random inputs here): the padding rows change nothing in the request's rows, and never come back;
    - the unpadded batch's numbers up to float32 rounding: onnxruntime's CPU kernels round differently at
      another batch size, as they already do when dynamic batching joins a request to others.
    """
    padded, plain = _registry("on", name, version), _registry("off", name, version)
    try:
        on, off = padded.get(name), plain.get(name)
        assert on.decoder.shapes == (1, 2, 4, 8, 16) and off.decoder.shapes is None
        rng = np.random.default_rng(3)
        c, h, w = on.manifest.image.shape
        for n in (1, 3, 5, 9, 20):
            size = n if n > 16 else next(s for s in on.decoder.shapes if s >= n)
            z = rng.standard_normal((n, on.latent_dim)).astype(np.float32)
            x = rng.random((n, c, h, w), dtype=np.float32)
            for graph_on, graph_off, inputs in zip(on.graphs, off.graphs, (x, z, x), strict=False):
                got = graph_on.run(inputs)
                assert all(len(out) == n for out in got)
                if n <= 16:
                    filler = rng.random((size - n, *inputs.shape[1:]), dtype=np.float32)
                    same_size = graph_off.run(np.concatenate([inputs, filler]))
                    for a, b in zip(got, _rows(same_size, n), strict=True):
                        np.testing.assert_array_equal(a, b)
                for a, b in zip(got, graph_off.run(inputs), strict=True):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            rec_on, rec_off = asyncio.run(on.reconstruct(x)), asyncio.run(off.reconstruct(x))
            assert rec_on.scores.shape == (n,) and rec_on.images.shape == (n, c, h, w)
            np.testing.assert_allclose(rec_on.scores, rec_off.scores, rtol=1e-5)
    finally:
        asyncio.run(padded.close())
        asyncio.run(plain.close())


def test_padding_is_off_on_cpu_by_default_and_each_padded_shape_is_warmed(monkeypatch):
    seen: list[int] = []
    from service.inference.runtime import Graph

    run = Graph.run

    def spy(self, x):
        seen.append(len(x))
        return run(self, x)

    monkeypatch.setattr(Graph, "run", spy)
    auto = _registry("auto", "mnist", 2)
    try:
        assert auto.get("mnist").decoder.shapes is None  # CPU: 'auto' pads on CUDA only
        assert sorted(set(seen)) == [1]  # CPU sessions are warmed at batch 1 only
    finally:
        asyncio.run(auto.close())
    seen.clear()
    forced = _registry("on", "mnist", 2)
    try:
        assert sorted(set(seen)) == [1, 2, 4, 8, 16]  # every shape, each graph
        assert len(seen) == 2 * 5
    finally:
        asyncio.run(forced.close())
