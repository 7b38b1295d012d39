"""Several versions of a model loaded at once, by the version policy; requests may pin one.

Versions are copies of the committed 2-D model whose decoders differ by a bias shift, so each version's
output is recognisable; no training needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import ROOT

from service.config import Settings
from service.errors import ModelNotFound
from service.inference import ModelRegistry

pytestmark = pytest.mark.timeout(120)
NAME = "mnist-2d"
Z = np.array([[0.3, -0.7], [1.1, 0.2]], dtype=np.float32)


def _publish(models: Path, version: int) -> None:
    """models/mnist-2d/<version>/: the committed model, its decoder's output bias shifted by version - 1,
    published as an export does (staged beside, then renamed into place)."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    staging = models / NAME / f".{version}.staging"
    shutil.copytree(ROOT / "models" / NAME / "1", staging)
    manifest = json.loads((staging / "model.json").read_text())
    if version > 1:
        graph_path = staging / manifest["decoder"]["file"]
        graph = onnx.load(str(graph_path))
        pixels = int(np.prod(manifest["image"]["height"] * manifest["image"]["width"]))
        for init in graph.graph.initializer:  # the output layer's bias: one float per pixel
            value = numpy_helper.to_array(init)
            if value.dtype == np.float32 and value.shape == (pixels,):
                shifted = (value + np.float32(version - 1)).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(shifted, init.name))
                break
        else:
            raise AssertionError("no output bias in the decoder")
        onnx.save(graph, str(graph_path))
        manifest["decoder"]["sha256"] = hashlib.sha256(graph_path.read_bytes()).hexdigest()
    manifest["version"] = version
    (staging / "model.json").write_text(json.dumps(manifest))
    staging.rename(models / NAME / str(version))


def _registry(models: Path, policy: str = "latest:2") -> ModelRegistry:
    settings = Settings(
        models_dir=models, provider="cpu", reload_interval_s=0, max_batch_size=4, version_policy=policy,
        request_timeout_s=1,
    )  # fmt: skip
    return ModelRegistry(settings)


async def _decode(registry: ModelRegistry, version: int | None) -> tuple[int, np.ndarray]:
    model = registry.get(NAME, version)
    return model.manifest.version, await model.decode(Z.copy())


def test_latest_n_loads_the_newest_versions_and_requests_pin_any_of_them(tmp_path):
    models = tmp_path / "models"
    for version in (1, 2, 3):
        _publish(models, version)

    async def scenario() -> dict[str, Any]:
        registry = _registry(models)
        await asyncio.to_thread(registry.load)
        try:
            out = {
                "loaded": registry.loaded_versions(),
                "ready": registry.ready,
                "unpinned": await _decode(registry, None),
                "v2": await _decode(registry, 2),
                "v3": await _decode(registry, 3),
            }
            with pytest.raises(ModelNotFound, match=r"no loaded version 1; loaded: \[2, 3\]"):
                registry.get(NAME, 1)
            return out
        finally:
            await registry.close()

    out = asyncio.run(scenario())
    assert out["loaded"] == {NAME: [2, 3]} and out["ready"]
    assert out["unpinned"][0] == 3 and np.array_equal(out["unpinned"][1], out["v3"][1])
    assert out["v2"][0] == 2 and not np.array_equal(out["v2"][1], out["v3"][1])  # two different models


def test_hot_reload_loads_beside_and_retires_only_what_the_policy_drops(tmp_path, caplog):
    """A client pinned to v1 gets v1's exact vectors before and after v2 is published; v3 retires v1."""
    models = tmp_path / "models"
    _publish(models, 1)

    async def scenario() -> dict[str, Any]:
        registry = _registry(models)
        await asyncio.to_thread(registry.load)
        try:
            out: dict[str, Any] = {"before": await _decode(registry, 1)}
            _publish(models, 2)
            out["swapped"] = await registry.reload()
            out["loaded_after_v2"] = registry.loaded_versions()
            out["pinned_v1"] = await _decode(registry, 1)
            out["unpinned"] = await _decode(registry, None)
            _publish(models, 3)
            out["swapped_v3"] = await registry.reload()
            out["loaded_after_v3"] = registry.loaded_versions()
            out["pinned_v2"] = await _decode(registry, 2)
            with pytest.raises(ModelNotFound, match=r"loaded: \[2, 3\]"):
                registry.get(NAME, 1)
            return out
        finally:
            await registry.close()

    with caplog.at_level(logging.INFO):
        out = asyncio.run(scenario())
    assert out["swapped"] == [f"{NAME} v2"] and out["loaded_after_v2"] == {NAME: [1, 2]}
    assert out["pinned_v1"][0] == 1 and np.array_equal(out["pinned_v1"][1], out["before"][1])  # exact
    assert out["unpinned"][0] == 2 and not np.array_equal(out["unpinned"][1], out["before"][1])
    assert out["swapped_v3"] == [f"{NAME} v3"] and out["loaded_after_v3"] == {NAME: [2, 3]}
    assert out["pinned_v2"][0] == 2 and np.array_equal(out["pinned_v2"][1], out["unpinned"][1])
    assert f"model {NAME} v1 retired (version policy latest:2)" in caplog.text


def test_a_specific_policy_loads_exactly_the_listed_versions(tmp_path):
    models = tmp_path / "models"
    for version in (1, 2, 3):
        _publish(models, version)

    async def scenario() -> tuple[dict[str, list[int]], int, list[str], dict[str, list[int]]]:
        registry = _registry(models, "specific:1,3,4")
        await asyncio.to_thread(registry.load)
        try:
            loaded = registry.loaded_versions()
            newest = registry.get(NAME).manifest.version
            with pytest.raises(ModelNotFound, match=r"no loaded version 2; loaded: \[1, 3\]"):
                registry.get(NAME, 2)
            _publish(models, 4)  # listed: loaded when it appears, nothing retired
            swapped = await registry.reload()
            return loaded, newest, swapped, registry.loaded_versions()
        finally:
            await registry.close()

    loaded, newest, swapped, after = asyncio.run(scenario())
    assert loaded == {NAME: [1, 3]} and newest == 3
    assert swapped == [f"{NAME} v4"] and after == {NAME: [1, 3, 4]}


def test_the_version_policy_setting_is_validated():
    for good in ("latest:1", "latest:2", "specific:3", "specific:1,3"):
        assert Settings(version_policy=good).version_policy == good
    for bad in ("latest:0", "latest", "newest:2", "specific:", "specific:1,,2", "specific:01", "all"):
        with pytest.raises(ValueError):
            Settings(version_policy=bad)
