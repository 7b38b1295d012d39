"""Every file a model version reads is hashed, and its declared size is bounded before it loads.

Graphs with ONNX external data are built with onnx (tests/onnx_models.py's linear VAE, its decoder weights
moved to a file beside it). A real `vae-serve` serves a good model beside each bad version: the bad one is
refused alone, at startup and on hot reload, and the good ones keep answering. The 2.5 GB external file is
sparse (no disk, no memory): only its size is ever read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto
from onnx_models import write_model
from serving import vae_serve

from service.inference.model_files import ModelFileError, check_external_data, check_file_sizes, external_refs
from vae_contract.manifest import read_manifest, sha256_file

pytestmark = pytest.mark.timeout(60)

GB = 1 << 30


def _externalize(folder: Path, data_name: str = "decoder.data", *, list_it: bool = True) -> Path:
    """Move the decoder's weight matrix to `data_name` beside it; list the file (hashed) in the manifest.
    (By hand: onnx.save_model would move the Reshape target too, which onnxruntime's shape inference must
    read inline.)"""
    graph_path = folder / "decoder.onnx"
    model = onnx.load(graph_path)
    weight = next(t for t in model.graph.initializer if t.name == "w_dec")
    (folder / data_name).write_bytes(weight.raw_data)
    length = len(weight.raw_data)
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", "0"), ("length", str(length))):
        weight.external_data.add(key=key, value=value)
    graph_path.write_bytes(model.SerializeToString())
    _rehash(folder, data_name if list_it else None)
    return folder / data_name


def _rehash(folder: Path, data_name: str | None) -> None:
    manifest_path = folder / "model.json"
    raw = json.loads(manifest_path.read_text())
    raw["decoder"]["sha256"] = sha256_file(folder / "decoder.onnx")
    if data_name is not None:
        raw["decoder"]["external_data"] = [{"file": data_name, "sha256": sha256_file(folder / data_name)}]
    manifest_path.write_text(json.dumps(raw))


def _tiny_graph_naming_a_huge_file(folder: Path, size: int) -> None:
    """Replace the decoder's weight by one external tensor of `size` bytes in a sparse file."""
    graph_path = folder / "decoder.onnx"
    model = onnx.load(graph_path)
    weight = next(t for t in model.graph.initializer if t.name == "w_dec")
    huge = TensorProto(name="w_dec", data_type=TensorProto.FLOAT, dims=[size // 4])
    huge.data_location = TensorProto.EXTERNAL
    huge.external_data.add(key="location", value="huge.bin")
    model.graph.initializer.remove(weight)
    model.graph.initializer.append(huge)
    graph_path.write_bytes(model.SerializeToString())
    with (folder / "huge.bin").open("wb") as fh:
        fh.truncate(size)  # sparse: no blocks written
    raw = json.loads((folder / "model.json").read_text())
    raw["decoder"]["sha256"] = sha256_file(graph_path)
    raw["decoder"]["external_data"] = [{"file": "huge.bin", "sha256": "0" * 64}]
    (folder / "model.json").write_text(json.dumps(raw))


def test_external_refs_are_read_from_the_protobuf(tmp_path):
    folder = write_model(tmp_path, "lin")
    assert external_refs((folder / "decoder.onnx").read_bytes()) == []
    _externalize(folder)
    refs = external_refs((folder / "decoder.onnx").read_bytes())
    assert [r.location for r in refs] == ["decoder.data"]
    size = (folder / "decoder.data").stat().st_size
    assert sum(r.length or 0 for r in refs) == size


def test_the_declared_size_is_checked_from_file_sizes(tmp_path):
    folder = write_model(tmp_path, "lin")
    _tiny_graph_naming_a_huge_file(folder, int(2.5 * GB))
    assert (folder / "decoder.onnx").stat().st_size < 1024
    with pytest.raises(ModelFileError, match="VAE_MAX_MODEL_BYTES"):
        check_file_sizes(folder, read_manifest(folder), 2 * GB)
    raw = json.loads((folder / "model.json").read_text())
    del raw["decoder"]["external_data"]  # unlisted: the size named inside the graph is the bound's
    (folder / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="does not list"):
        check_external_data(folder, read_manifest(folder), 2 * GB)


def test_external_data_the_manifest_does_not_list_is_refused(tmp_path):
    folder = write_model(tmp_path, "lin")
    _externalize(folder, list_it=False)
    with pytest.raises(ModelFileError, match="does not list with a sha256"):
        check_external_data(folder, read_manifest(folder), 2 * GB)


def _models_json(url: str) -> dict:
    return httpx.get(url + "/v1/models", timeout=10).json()


def _versions(url: str) -> dict[str, list[int]]:
    body = _models_json(url)
    return {m["name"]: m.get("versions") or [m["version"]] for m in body["models"] if m.get("version")}


def test_a_bad_version_is_refused_alone_at_startup_and_on_reload(tmp_path):
    models = tmp_path / "models"
    write_model(models, "good")
    hashed = write_model(models, "hashed")
    _externalize(hashed)
    altered = write_model(models, "altered")
    data = _externalize(altered)
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # one weight changed after export
    unlisted = write_model(models, "unlisted")
    _externalize(unlisted, list_it=False)
    huge = write_model(models, "huge")
    _tiny_graph_naming_a_huge_file(huge, int(2.5 * GB))

    def answering(url: str) -> bool:
        return httpx.get(url + "/v1/models", timeout=2).status_code == 200

    env = {"VAE_GRPC_PORT": "0", "VAE_RELOAD_INTERVAL_S": "0.2", "VAE_DEFAULT_MODEL": "good"}
    log_path = tmp_path / "server.log"
    with vae_serve(models, log_path, env=env, until=answering) as (url, proc):

        def status(name: str) -> int:
            return httpx.post(url + "/v1/sample", json={"model": name, "n": 1}, timeout=10).status_code

        deadline = time.monotonic() + 20
        while status("good") != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status("good") == 200 and status("hashed") == 200
        assert status("altered") == 503 and status("unlisted") == 503 and status("huge") == 503
        log = log_path.read_text()
        assert "sha256 mismatch" in log and "does not list with a sha256" in log
        assert "VAE_MAX_MODEL_BYTES" in log

        # Hot reload: a new version pointing at the huge file is refused; v1 keeps answering.
        v2 = write_model(models, "good", version=2)
        _tiny_graph_naming_a_huge_file(v2, int(2.5 * GB))
        deadline = time.monotonic() + 20
        while log_path.read_text().count("VAE_MAX_MODEL_BYTES") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log_path.read_text().count("VAE_MAX_MODEL_BYTES") >= 2
        r = httpx.post(url + "/v1/sample", json={"model": "good", "n": 1}, timeout=10)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        rss_kb = int(next(x for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if x.startswith("VmHWM:")).split()[1])  # fmt: skip
        assert rss_kb < 1024 * 1024  # the 2.5 GB tensor was never allocated
