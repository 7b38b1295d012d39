"""What a model version's graphs will read and hold, found before onnxruntime opens any of them.

An ONNX tensor may keep its bytes in another file (external data: `location`, `offset`, `length`), which
onnxruntime reads when the session is made. So a 0.5 KB graph can name a 2.5 GB file, and a file no manifest
hash covers can change the weights. Before loading, every graph file's protobuf is walked here, by its wire
format, without decoding any tensor (so without the `onnx` package, which the server does not need):

- every external file must be a plain file name beside the graph and listed, with its sha256, in the
  graph's `external_data` in the manifest (`verify_model_dir` checks those hashes), so every byte a version
  reads is covered by a hash;
- the version's declared memory, its graph files plus the external bytes their tensors name (from
  `length`, or the file's size past `offset`), must fit `max_model_bytes`, checked from file sizes, so a
  version too large for the host is refused alone and the others keep serving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vae_contract.manifest import GraphSpec, Manifest

# ONNX message types (onnx.proto) and, per type, its length-delimited fields that hold messages.
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _FUNCTION: {7: _NODE, 11: _ATTR},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
    _ENTRY: {},
}
_TENSOR_DATA_LOCATION = 14  # TensorProto.data_location; 1: EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs (If, Loop, Scan bodies); real models nest a few levels


class ModelFileError(Exception):
    """A graph whose files are not all hashed, or that would not fit the memory bound; says which."""


@dataclass(frozen=True)
class ExternalRef:
    location: str
    offset: int
    length: int | None


def external_refs(data: bytes) -> list[ExternalRef]:
    """Every external-data reference in a serialized ModelProto (`data`), in file order."""
    refs: list[ExternalRef] = []
    stack: list[tuple[int, int, int, int]] = [(_MODEL, 0, len(data), 0)]  # (type, start, end, depth)
    while stack:
        kind, pos, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ModelFileError(f"graphs nested more than {_MAX_DEPTH} levels deep")
        entries: dict[str, str] = {}
        external = False
        while pos < end:
            key, pos = _varint(data, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(data, pos)
                if kind == _TENSOR and field == _TENSOR_DATA_LOCATION:
                    external = value == 1
            elif wire == 2:
                size, pos = _varint(data, pos)
                if pos + size > end:
                    raise ModelFileError("truncated protobuf")
                child = _CHILDREN[kind].get(field)
                if child == _ENTRY:
                    k, v = _entry(data, pos, pos + size)
                    entries[k] = v
                elif child is not None:
                    stack.append((child, pos, pos + size, depth + 1))
                pos += size
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                raise ModelFileError(f"unsupported protobuf wire type {wire}")
        if pos != end:
            raise ModelFileError("truncated protobuf")
        if kind == _TENSOR and (external or entries):
            if "location" not in entries:
                raise ModelFileError("a tensor is marked external but names no location")
            offset, length = entries.get("offset", "0"), entries.get("length")
            if not offset.isdigit() or (length is not None and not length.isdigit()):
                raise ModelFileError("an external tensor's offset or length is not a number")
            refs.append(
                ExternalRef(entries["location"], int(offset), None if length is None else int(length))
            )
    return refs


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelFileError("truncated protobuf")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _entry(data: bytes, pos: int, end: int) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    out = ["", ""]
    while pos < end:
        key, pos = _varint(data, pos)
        if key & 7 != 2:
            raise ModelFileError("malformed external-data entry")
        size, pos = _varint(data, pos)
        if (key >> 3) in (1, 2):
            out[(key >> 3) - 1] = data[pos : pos + size].decode("utf-8", "replace")
        pos += size
    return out[0], out[1]


def check_file_sizes(model_dir: Path, manifest: Manifest, max_bytes: int) -> int:
    """Refuse a version whose graph files and listed external data exceed `max_bytes`, from their sizes
    alone (before anything is hashed or read); the total otherwise."""
    total = 0
    for role, graph in manifest.graphs().items():
        for file, what in ((graph.file, "graph"), *((d.file, "external data") for d in graph.external_data)):
            total += _size(model_dir / file, f"{role} {what}")
    if total > max_bytes:
        raise ModelFileError(
            f"{model_dir}: graphs and external data of {total} bytes exceed VAE_MAX_MODEL_BYTES ({max_bytes})"
        )
    return total


def check_external_data(model_dir: Path, manifest: Manifest, max_bytes: int) -> int:
    """Refuse a version whose graphs name external data the manifest does not list (so not hashed), or
    whose graphs plus the external bytes their tensors name exceed `max_bytes`; the total otherwise."""
    total = 0
    for role, graph in manifest.graphs().items():
        total += _graph_bytes(model_dir, role, graph, max_bytes - total, max_bytes)
    return total


def _graph_bytes(model_dir: Path, role: str, graph: GraphSpec, budget: int, bound: int) -> int:
    path = model_dir / graph.file
    size = _size(path, f"{role} graph")
    if size > budget:
        raise ModelFileError(
            f"{path}: {role} graph of {size} bytes: the version's graphs exceed VAE_MAX_MODEL_BYTES ({bound})"
        )
    try:
        refs = external_refs(path.read_bytes())
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: not a readable ONNX graph ({exc})") from None
    hashed = {d.file for d in graph.external_data}
    total = size
    for ref in refs:
        if ref.location not in hashed or os.path.basename(ref.location) != ref.location:
            raise ModelFileError(
                f"{path}: {role} graph reads external data {ref.location[:64]!r}, which the manifest does "
                "not list with a sha256 in the graph's external_data"
            )
        file_size = _size(model_dir / ref.location, f"{role} external data")
        length = ref.length if ref.length is not None else max(0, file_size - ref.offset)
        if ref.offset + length > file_size:
            raise ModelFileError(f"{path}: external tensor past the end of {ref.location}")
        total += length
        if total > budget:
            raise ModelFileError(
                f"{path}: {role} graph's weights ({total} bytes with its external data) make the version "
                f"exceed VAE_MAX_MODEL_BYTES ({bound})"
            )
    return total


def _size(path: Path, what: str) -> int:
    try:
        return path.stat().st_size
    except OSError:
        raise ModelFileError(f"{path}: {what} missing") from None
