"""One bad model or version folder never takes down the others, at startup or on hot reload.

Real folders in tmp_path, holding copies of the committed models (no training): garbage manifests, stray
files and folders, links out of models/, an export's leftover staging folder, deleted and republished
versions, a latent size change; and a real `vae-serve` process started over all of them at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import ROOT, vae_serve

from service.config import Settings
from service.inference import ModelRegistry

pytestmark = pytest.mark.timeout(120)

GOOD = "mnist-2d"  # latent_dim 2
OTHER = "mnist"  # latent_dim 32


def _settings(root: Path, **overrides: Any) -> Settings:
    return Settings(models_dir=root, provider="cpu", reload_interval_s=0, max_batch_size=4, **overrides)


def _copy_version(models: Path, name: str, version: int, source: str = GOOD, **manifest: Any) -> Path:
    """models/<name>/<version>/ as a copy of a committed model, its manifest naming it (plus `manifest`)."""
    target = models / name / str(version)
    shutil.copytree(ROOT / "models" / source / "1", target)
    path = target / "model.json"
    data = json.loads(path.read_text())
    data.update(name=name, version=version, **manifest)
    path.write_text(json.dumps(data))
    return target


def _bad_manifest(models: Path, name: str, content: bytes) -> None:
    folder = _copy_version(models, name, 1)
    (folder / "model.json").write_bytes(content)


def _zoo(tmp_path: Path) -> Path:
    """A models/ folder with one healthy model and everything a person or a tool might leave beside it."""
    models = tmp_path / "models"
    _copy_version(models, GOOD, 1)
    for junk in (
        models / ".DS_Store",
        models / "README",
        models / GOOD / ".DS_Store",
        models / GOOD / "NOTES",
    ):
        junk.write_text("not a model")
    for folder in ("tmp", ".cache", "UPPER"):  # no versions / hidden / not a valid model name
        (models / folder).mkdir()
    for folder in ("latest", "v2", "03", "0", "2.tmp", "\u00b2", "\u0663", ".2.k3j4h5"):
        (models / GOOD / folder).mkdir()  # none of these is a version (the last: a killed export's staging)
    (models / GOOD / "7").write_text("a file, not a folder")
    _bad_manifest(models, "huge", b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    _bad_manifest(models, "deep", b"[" * 200_000 + b"]" * 200_000)
    _bad_manifest(models, "deep-dict", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    _bad_manifest(models, "deep-valid", _deep_but_valid())
    _bad_manifest(models, "latin", '{"name": "caf\u00e9"}'.encode("latin-1"))
    _bad_manifest(models, "garbage", b"{not json")
    _bad_manifest(models, "listed", b"[1, 2, 3]")
    _bad_manifest(models, "nan", json.dumps({"latent_dim": float("nan")}).encode())
    fifo = _copy_version(models, "fifo", 1) / "model.json"
    fifo.unlink()
    os.mkfifo(fifo)  # reading it would block forever
    outside = _copy_version(tmp_path / "elsewhere", "linked", 1)
    (models / "linked").mkdir()
    (models / "linked" / "1").symlink_to(outside, target_is_directory=True)
    return models


def _deep_but_valid() -> bytes:
    """A valid manifest whose free-form training config nests 300 levels (JSON parses it; encoders refuse)."""
    data = json.loads((ROOT / "models" / GOOD / "1" / "model.json").read_text())
    nested: Any = 1
    for _ in range(300):
        nested = {"a": nested}
    data.update(name="deep-valid", training={"nested": nested})
    return json.dumps(data).encode()


REFUSED = {
    "huge": "manifest larger than 1048576 bytes",
    "deep": "nested too deeply",
    "deep-dict": "nested too deeply",
    "deep-valid": "nested too deeply (more than 32 levels)",
    "latin": "not UTF-8",
    "garbage": "not JSON",
    "listed": "invalid manifest",
    "nan": "invalid manifest",
    "fifo": "not a regular file",
    "linked": "symbolic link leading out of",
}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks")
def test_every_bad_folder_is_refused_alone_and_the_healthy_model_serves(tmp_path, caplog):
    models = _zoo(tmp_path)
    registry = ModelRegistry(_settings(models))
    with caplog.at_level(logging.INFO):
        registry.load()
    try:
        assert list(registry.models) == [GOOD] and registry.models[GOOD].manifest.version == 1
        assert sorted(registry.failures) == sorted(REFUSED)
        for name, reason in REFUSED.items():
            assert reason in registry.failures[name], (name, registry.failures[name])
            assert str(tmp_path) not in registry.failures[name]  # client-safe: no host paths
            assert f"model {name} NOT loaded" in caplog.text
        assert not registry.ready  # readiness says some configured model is missing...
        assert registry.readiness()["models"][GOOD] is True  # ...and the healthy one serves
        assert "tmp" not in registry.names and "UPPER" not in registry.names
        assert not [r for r in caplog.records if r.exc_info]  # no tracebacks
        assert registry.reload_failures == {}  # the junk beside mnist-2d/1 is not a version
    finally:
        asyncio.run(registry.close())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks")
def test_follow_symlinks_serves_a_linked_version(tmp_path):
    models = _zoo(tmp_path)
    registry = ModelRegistry(_settings(models, follow_symlinks=True, models=["linked"]))
    registry.load()
    try:
        assert registry.ready and registry.models["linked"].manifest.version == 1
    finally:
        asyncio.run(registry.close())


def test_a_configured_name_that_is_no_folder_name_is_refused(tmp_path):
    models = tmp_path / "models"
    _copy_version(models, GOOD, 1)
    _copy_version(tmp_path, "escaped", 1)  # beside models/, reachable only as '../escaped'
    registry = ModelRegistry(_settings(models, models=[GOOD, "../escaped", "Bad\nName"]))
    registry.load()
    try:
        assert list(registry.models) == [GOOD] and registry.names == [GOOD]
        assert sorted(registry.failures) == ["../escaped", "Bad\nName"]
        assert "not a model name" in registry.failures["../escaped"]
    finally:
        asyncio.run(registry.close())


def _ready_body(url: str) -> dict[str, Any] | None:
    r = httpx.get(f"{url}/readyz", timeout=2)
    body = r.json()
    return body if body.get("versions", {}).get(GOOD) == 1 else None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks")
def test_vae_serve_starts_over_the_zoo_and_serves_the_healthy_model(tmp_path):
    models = _zoo(tmp_path)
    log = tmp_path / "serve.log"
    with vae_serve(models, log, until=lambda url: _ready_body(url) is not None) as (url, proc):
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["models"][GOOD] is True and sorted(body["failures"]) == sorted(REFUSED)
        assert str(tmp_path) not in r.text
        decoded = httpx.post(f"{url}/v1/decode", json={"model": GOOD, "latents": [[0.1, -0.2]]})
        assert decoded.status_code == 200
        assert httpx.post(f"{url}/v1/decode", json={"model": "deep", "latents": [[0.1]]}).status_code == 503
        assert proc.poll() is None
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def test_a_broken_newest_version_at_startup_leaves_the_previous_one_serving(tmp_path, caplog):
    models = tmp_path / "models"
    _copy_version(models, GOOD, 1)
    broken = _copy_version(models, GOOD, 2)
    with (broken / "decoder.onnx").open("ab") as fh:
        fh.write(b"tampered")
    registry = ModelRegistry(_settings(models))
    with caplog.at_level(logging.INFO):
        registry.load()
    try:
        assert registry.ready and registry.models[GOOD].manifest.version == 1
        assert registry.reload_failures[GOOD].startswith("version 2: ")
        assert "sha256 mismatch" in registry.reload_failures[GOOD]
        assert f"model {GOOD} v2 NOT loaded" in caplog.text and f"model {GOOD} v1 loaded" in caplog.text
    finally:
        asyncio.run(registry.close())


def test_hot_reload_treats_each_model_and_folder_on_its_own(tmp_path, caplog):
    """A garbage new version of one model is refused once (no traceback, no log line per poll) while the
    other model's new version and a model folder that appears later are loaded; state follows the disk."""
    models = tmp_path / "models"
    _copy_version(models, GOOD, 1)
    _copy_version(models, "second", 1)

    async def scenario() -> dict[str, Any]:
        registry = ModelRegistry(_settings(models))
        await asyncio.to_thread(registry.load)
        seen: dict[str, Any] = {}
        try:
            assert registry.ready
            (models / GOOD / "2").mkdir()
            (models / GOOD / "2" / "model.json").write_bytes(b"[" * 100_000)  # a deep, unfinished manifest
            _copy_version(models, "second", 2)
            (models / GOOD / ".3.x8f2").mkdir()  # an export killed while staging
            (models / "tmp").mkdir()  # a stray folder: no versions, ignored
            seen["first"] = await registry.reload()
            seen["polls"] = [await registry.reload() for _ in range(3)]  # nothing changed: nothing logged
            seen["refused"] = dict(registry.reload_failures)
            _copy_version(models, "third", 1)  # a model folder that appears later
            seen["third"] = await registry.reload()
            shutil.rmtree(models / GOOD / "2")  # the refused folder is removed: its entry goes
            await registry.reload()
            seen["after_rm"] = dict(registry.reload_failures)
            seen["ready"] = registry.readiness()
        finally:
            await registry.close()
        return seen

    with caplog.at_level(logging.INFO):
        seen = asyncio.run(scenario())
    assert seen["first"] == ["second v2"] and seen["polls"] == [[], [], []]
    assert "nested too deeply" in seen["refused"][GOOD] and "version 2" in seen["refused"][GOOD]
    assert seen["third"] == ["third v1"]
    assert seen["after_rm"] == {}
    ready = seen["ready"]
    assert ready["ready"] and ready["versions"] == {GOOD: 1, "second": 2, "third": 1}
    assert "tmp" not in ready["models"]
    refusals = [r for r in caplog.records if "NOT loaded" in r.getMessage()]
    assert len(refusals) == 1 and f"{GOOD} v2 NOT loaded (still serving v1)" in refusals[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


def test_deleting_the_serving_version_keeps_it_serving_and_an_older_number_is_not_loaded(tmp_path, caplog):
    models = tmp_path / "models"
    _copy_version(models, GOOD, 2)

    async def scenario() -> list[Any]:
        registry = ModelRegistry(_settings(models))
        await asyncio.to_thread(registry.load)
        try:
            shutil.rmtree(models / GOOD / "2")  # the serving version's folder is deleted...
            _copy_version(models, GOOD, 1)  # ...and an older number is published
            swapped = [await registry.reload(), await registry.reload()]
            model = registry.get(GOOD)
            z = await model.decode(__import__("numpy").zeros((1, 2), dtype="float32"))
            return [swapped, model.manifest.version, z.shape, registry.ready]
        finally:
            await registry.close()

    with caplog.at_level(logging.INFO):
        swapped, version, shape, ready = asyncio.run(scenario())
    assert swapped == [[], []] and version == 2 and shape == (1, 1, 28, 28) and ready
    gone = [r for r in caplog.records if "its folder is gone" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.WARNING  # logged once, not per poll
    assert "newest on disk is v1" in gone[0].getMessage()
    assert sum("older than the serving v2" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("allow", [False, True])
def test_a_new_version_with_another_latent_size_is_refused_unless_allowed(tmp_path, caplog, allow):
    models = tmp_path / "models"
    _copy_version(models, GOOD, 1)

    async def scenario() -> tuple[list[str], int, dict[str, str]]:
        registry = ModelRegistry(_settings(models, allow_latent_change=allow))
        await asyncio.to_thread(registry.load)
        try:
            _copy_version(models, GOOD, 2, source=OTHER)  # latent_dim 32 instead of 2
            swapped = await registry.reload()
            return swapped, registry.get(GOOD).latent_dim, dict(registry.reload_failures)
        finally:
            await registry.close()

    with caplog.at_level(logging.INFO):
        swapped, latent_dim, refused = asyncio.run(scenario())
    if allow:
        assert swapped == [f"{GOOD} v2"] and latent_dim == 32 and refused == {}
        assert any(
            r.levelno == logging.WARNING and "latent_dim 32 differs" in r.getMessage() for r in caplog.records
        )
    else:
        assert swapped == [] and latent_dim == 2
        assert "latent_dim 32 differs from the serving v1's 2" in refused[GOOD]
        assert "VAE_ALLOW_LATENT_CHANGE" in refused[GOOD]
