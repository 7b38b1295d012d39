"""Property-based fuzzing of every operation in the served OpenAPI schema: no input gives a 5xx.

A small JSON-schema -> Hypothesis translator (no extra dependency) generates path and query parameters and
request bodies for each operation from `/openapi.json`: mostly schema-shaped values with realistic leaves
(model names, base64 digits, latents of the right length), each field sometimes swapped for junk, plus
random bodies under random content types. The /v2 inference operations, whose bodies the schema leaves open,
get Open Inference Protocol shaped requests, including binary tensor data; and valid /v2 JSON, /v2 binary
and `.npy` bodies are mutated field by field and byte by byte. Every error must be the closed body.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import struct
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.errors import ErrorType
from service.main import create_app
from vae_contract.imaging import encode_png

# VAE_FUZZ_EXAMPLES=1000 for a deeper (and then randomized) run; the default keeps the suite quick.
EXAMPLES = int(os.environ.get("VAE_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 50,  # the default run: the same cases every time, so a failure is never a flake
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# The spec does not depend on the models, so it is built without loading any (collection stays fast);
# test_the_served_schema_is_the_fuzzed_one checks it is what the server publishes.
SPEC = create_app(Settings(provider="cpu")).openapi()
OPERATIONS = [
    (method.upper(), path, op)
    for path, ops in SPEC["paths"].items()
    for method, op in ops.items()
    if method in ("get", "post", "put", "delete", "patch")
]

DIGIT = encode_png(np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28))
MODELS = ["tiny", "tiny-2d"]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
junk_json = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
junk_bytes = st.one_of(
    st.binary(max_size=256),
    st.sampled_from([DIGIT, DIGIT[:60], b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b""]),
)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _special(name: str) -> st.SearchStrategy[Any] | None:
    """Realistic values for fields whose meaning the schema alone does not carry."""
    if name in ("model", "name", "model_name"):
        oip = [f"{m}-{role}" for m in MODELS for role in ("encoder", "decoder")]
        bad = ["nope", "../tiny", "/etc", "http://x", "tiny/1"]
        return st.sampled_from(MODELS) | st.sampled_from(MODELS) | st.sampled_from([*oip, *bad])
    if name == "latents":
        vec = lambda d: st.lists(st.floats(-3, 3, width=32), min_size=d, max_size=d)  # noqa: E731
        dims = st.sampled_from([8, 8, 2, 3])
        good = dims.flatmap(lambda d: st.lists(vec(d), min_size=1, max_size=4))
        return st.one_of(good, st.sampled_from([[[0.0] * 8] * 2, [[0.5, -0.5]] * 2]))
    if name == "images":
        good = st.lists(st.just(base64.b64encode(DIGIT).decode()), min_size=1, max_size=3)
        blobs = st.one_of(st.just(DIGIT), junk_bytes).map(lambda b: base64.b64encode(b).decode())
        return good | good | st.lists(blobs | st.text(max_size=12), min_size=0, max_size=3)
    if name == "files":
        good = st.lists(st.just(DIGIT), min_size=1, max_size=3)
        return good | good | st.lists(junk_bytes, min_size=0, max_size=3)
    if name == "version":
        return st.sampled_from(["1", "2", "0", "-1", "x", ""])
    return None


def from_schema(schema: dict[str, Any], name: str = "", depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values of `schema`: valid-looking ones first (they shrink there), junk sometimes."""
    special = _special(name)
    if special is not None:
        return st.one_of(special, special, special, junk_json) if depth else special
    schema = _resolve(schema)
    if depth > 4:
        return junk_json
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of(*(from_schema(s, name, depth + 1) for s in schema[key]))
    if "allOf" in schema:
        return from_schema(schema["allOf"][0], name, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=10)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {k: from_schema(v, k, depth + 1) for k, v in props.items()}
        shaped = st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
        extra = st.dictionaries(st.text(max_size=8), junk_json, max_size=1)
        return shaped | shaped | st.tuples(shaped, extra).map(lambda pair: {**pair[1], **pair[0]})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), name, depth + 1), max_size=4)
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        near = st.integers(min_value=lo, max_value=hi)
        return near | st.integers(min_value=-(2**65), max_value=2**65) | st.sampled_from([0, -1, 2**63])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, 1e-30, 1e308, -0.0])
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if schema.get("format") == "binary":
            return junk_bytes
        pattern = schema.get("pattern")
        text = st.text(max_size=30)
        return st.from_regex(pattern, fullmatch=True) | text if pattern else text
    if kind == "null":
        return st.none()
    return junk_json


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def requests_for(draw: st.DrawFn, method: str, path: str, op: dict[str, Any]) -> dict[str, Any]:
    """One request for an operation: URL with path and query parameters, and maybe a body."""
    url, query = path, {}
    for param in op.get("parameters", []):
        value = draw(from_schema(param.get("schema", {}), param["name"]))
        if param["in"] == "path":
            text = _param_value(value) or "x"
            url = url.replace("{" + param["name"] + "}", quote(text, safe=""))
        elif param["in"] == "query" and value is not None and draw(st.booleans()):
            query[param["name"]] = _param_value(value)
    request: dict[str, Any] = {"method": method, "url": url, "params": query, "headers": {}}
    request["headers"]["accept"] = draw(
        st.sampled_from(["application/json", "image/png", "application/x-npy", "*/*", "text/html", "x/y;q=x"])
    )
    content = op.get("requestBody", {}).get("content", {})
    if path.endswith("/infer"):
        request.update(draw(oip_body()))
    elif content:
        media = draw(st.sampled_from(sorted(content)))
        schema = content[media].get("schema", {})
        if media == "application/json":
            request["json"] = draw(st.one_of(from_schema(schema), from_schema(schema), junk_json))
        elif media == "multipart/form-data":
            form = draw(from_schema(schema))
            if not isinstance(form, dict):
                form = {"junk": form}
            files = form.pop("files", None)
            files = files if isinstance(files, list) else []
            request["files"] = [
                ("files", (f"{i}.png", f if isinstance(f, bytes) else str(f).encode(), "image/png"))
                for i, f in enumerate(files)
            ] or [("other", ("x.bin", b"", "application/octet-stream"))]
            request["data"] = {k: _param_value(v) for k, v in form.items()}
        else:
            request["content"] = draw(npy_body())
            request["headers"]["content-type"] = media
    return request


@st.composite
def npy_body(draw: st.DrawFn) -> bytes:
    import io

    rows, dim = draw(st.integers(0, 3)), draw(st.sampled_from([0, 1, 2, 8, 9]))
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool", "float16", "<U2"]))
    arr = np.zeros((rows, dim), dtype=dtype)
    if rows and dim and dtype.startswith("float") and draw(st.booleans()):
        arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1e30]))
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def oip_body(draw: st.DrawFn) -> dict[str, Any]:
    """Open Inference Protocol requests: JSON tensors, binary tensors, and broken variants of both."""
    valid = {"x": [[1, 1, 28, 28], [2, 1, 28, 28]], "z": [[1, 8], [3, 8], [2, 2]]}  # tiny-*: latent 8 or 2
    if draw(st.booleans()):
        name = draw(st.sampled_from(["x", "z"]))
        shape, datatype = draw(st.sampled_from(valid[name])), "FP32"
    else:
        name = draw(st.sampled_from(["x", "z", "images", "", "junk"]))
        shape = draw(st.lists(st.integers(-2, 30), min_size=0, max_size=4))
        datatype = draw(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "junk"]))
    count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    binary = draw(st.booleans()) and count <= 10_000
    payload = b""
    if binary:
        payload = np.zeros(count, dtype=np.float32).tobytes()
        cut = draw(st.integers(0, len(payload))) if draw(st.booleans()) else len(payload)
        tensor["parameters"] = {"binary_data_size": draw(st.sampled_from([cut, len(payload), -1, 2**40]))}
        payload = payload[:cut]
    elif count <= 10_000:
        values = st.lists(st.floats(-1, 1, width=32), min_size=count, max_size=count) if count <= 64 else None
        tensor["data"] = draw(
            st.one_of(
                st.just([0.5] * count),
                *([values] if values is not None else []),
                st.lists(json_leaf, max_size=5),
                junk_json,
            )
        )
    else:
        tensor["data"] = [0.0]
    body: dict[str, Any] = {"inputs": draw(st.sampled_from([[tensor], [tensor], [tensor, tensor], []]))}
    if draw(st.booleans()):
        body["outputs"] = [
            {"name": draw(st.text(max_size=8)), "parameters": {"binary_data": draw(st.booleans())}}
        ]
    if draw(st.booleans()):
        body = draw(junk_json) if draw(st.booleans()) else body
    header = json.dumps(body).encode()
    if binary:
        declared = draw(st.sampled_from([len(header), len(header) + 1, 0, -5, 10**12]))
        return {
            "content": header + payload,
            "headers": {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(declared),
            },
        }
    return {"content": header, "headers": {"content-type": "application/json"}}


@st.composite
def junk_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Any route, any method, any content type, any bytes."""
    method, path, _ = draw(st.sampled_from(OPERATIONS))
    path = re.sub(r"\{[^}]+\}", lambda _: draw(st.sampled_from([*MODELS, "tiny-encoder", "1", "x"])), path)
    ctype = draw(
        st.sampled_from(
            ["application/json", "multipart/form-data; boundary=b", "multipart/form-data",
             "application/x-npy", "application/octet-stream", "text/plain", "",
             "application/json; charset=utf-16", "image/png"]
        )
    )  # fmt: skip
    body = draw(st.one_of(junk_bytes, junk_json.map(lambda v: json.dumps(v).encode())))
    return {"method": draw(st.sampled_from([method, "POST", "PUT"])), "url": path, "content": body,
            "headers": {"content-type": ctype}}  # fmt: skip


ERROR_TYPES = {e.value for e in ErrorType}


def _check(client: Any, request: dict[str, Any]) -> None:
    r = client.request(**request)
    assert r.status_code < 500, (request, r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()  # every error is JSON in the closed shape
        assert isinstance(body["error"], str) and body["error_type"] in ERROR_TYPES, body
        assert "Traceback" not in r.text and r.headers["x-request-id"], body


# --- mutations of valid /v2 and .npy bodies -----------------------------------------------------------------

# Valid requests for the fixture models (tiny: latent 8, tiny-2d: latent 2, both 1x28x28).
OIP_VALID = [
    ("tiny-decoder", {"name": "z", "shape": [2, 8]}, ["x"]),
    ("tiny-2d-decoder", {"name": "z", "shape": [1, 2]}, ["x"]),
    ("tiny-encoder", {"name": "x", "shape": [1, 1, 28, 28]}, ["mean", "log_var"]),
]
wrong_type = st.one_of(
    junk_json, st.sampled_from([[], {}, "", "true", 1, -1, 2**63, 1e308, None, [{}], {"binary_data": "x"}])
)


@st.composite
def oip_mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid OIP request (JSON or binary tensors), then one to three fields set to junk or removed."""
    model, tensor, outputs = copy.deepcopy(draw(st.sampled_from(OIP_VALID)))
    count = int(np.prod(tensor["shape"]))
    values = np.full(count, 0.5, dtype=np.float32)
    binary = draw(st.booleans())
    tensor = {**tensor, "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": values.nbytes}
    else:
        tensor["data"] = values.tolist()
    body: dict[str, Any] = {
        "id": "r1",
        "inputs": [tensor],
        "outputs": [{"name": n, "parameters": {"binary_data": draw(st.booleans())}} for n in outputs],
        "parameters": {"binary_data_output": draw(st.booleans())},
    }
    paths = [("id",), ("inputs",), ("outputs",), ("parameters",), ("parameters", "binary_data_output"),
             ("inputs", 0, "name"), ("inputs", 0, "shape"), ("inputs", 0, "datatype"), ("inputs", 0, "data"),
             ("inputs", 0, "parameters"), ("inputs", 0, "shape", 0), ("outputs", 0), ("outputs", 0, "name"),
             ("outputs", 0, "parameters"), ("outputs", 0, "parameters", "binary_data")]  # fmt: skip
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        node: Any = body
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else node[key] if isinstance(node, list) else None
            if node is None or (isinstance(node, list) and not node):
                break
        else:
            last = path[-1]
            if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
                node.pop(last, None)
            elif isinstance(node, (dict, list)) and (isinstance(node, dict) or len(node) > last):
                node[last] = draw(wrong_type)
    if draw(st.integers(0, 4)) == 0:  # the same output many times: the response must stay bounded
        body["outputs"] = [{"name": outputs[0]}] * draw(st.integers(2, 5000))
    header = json.dumps(body).encode()
    if not binary:
        return {"method": "POST", "url": f"/v2/models/{model}/infer", "content": header,
                "headers": {"content-type": "application/json"}}  # fmt: skip
    raw = header + values.tobytes()
    declared = draw(st.sampled_from([len(header)] * 4 + [len(header) - 1, len(header) + 3, 0, len(raw) + 1]))
    if draw(st.booleans()):  # flip a few bytes anywhere
        data = bytearray(raw)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), max_size=4)):
            data[pos] = draw(st.integers(0, 255))
        raw = bytes(data)
    raw = raw[: draw(st.integers(0, len(raw)))] if draw(st.integers(0, 5)) == 0 else raw
    return {"method": "POST", "url": f"/v2/models/{model}/infer", "content": raw,
            "headers": {"content-type": "application/octet-stream",
                        "inference-header-content-length": str(declared)}}  # fmt: skip


@st.composite
def npy_mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid .npy of latents with its header text edited (shape, dtype, order, length) or bytes flipped."""
    import io

    arr = np.zeros((draw(st.integers(1, 3)), 8), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    text = data[10:128].decode("latin-1")
    edits = {
        "shape": lambda: "(" + ", ".join(map(str, draw(st.lists(
            st.integers(-3, 2**64) | st.sampled_from([0, 1, 8, 4096, 4097, 10**12]), max_size=3)))) + ",)",
        "descr": lambda: repr(draw(st.sampled_from(["<f8", ">f4", "|O", "<U4", "|b1", "<c8", "V8", "x"]))),
        "fortran_order": lambda: draw(st.sampled_from(["True", "1", "None", "'yes'"])),
    }  # fmt: skip
    for key in draw(st.lists(st.sampled_from(sorted(edits)), max_size=2)):
        start = text.index(f"'{key}': ") + len(key) + 4
        end = text.index("), " if key == "shape" else ", ", start) + (1 if key == "shape" else 0)
        text = text[:start] + edits[key]() + text[end:]
    header = text.encode("latin-1")
    body = data[:8] + len(header).to_bytes(2, "little") + header + data[128:]
    if draw(st.booleans()):
        flipped = bytearray(body)
        for pos in draw(st.lists(st.integers(0, min(len(flipped) - 1, 140)), max_size=3)):
            flipped[pos] = draw(st.integers(0, 255))
        body = bytes(flipped)
    body = body + b"\0" * draw(st.sampled_from([0, 0, 4, 32]))
    model = draw(st.sampled_from(["tiny", "tiny-2d"]))
    return {"method": "POST", "url": f"/v1/decode?model={model}", "content": body,
            "headers": {"content-type": "application/x-npy"}}  # fmt: skip


@settings(FUZZ, max_examples=2 * EXAMPLES)
@given(request=oip_mutated())
def test_no_5xx_from_mutated_oip_bodies(client, request):
    _check(client, request)


@settings(FUZZ, max_examples=2 * EXAMPLES)
@given(request=npy_mutated())
def test_no_5xx_from_mutated_npy_bodies(client, request):
    _check(client, request)


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_no_5xx_from_schema_shaped_requests(client, method, path, op):
    @FUZZ
    @given(requests_for(method, path, op))
    def run(request: dict[str, Any]) -> None:
        _check(client, request)

    run()


@settings(FUZZ, max_examples=4 * EXAMPLES)
@given(request=junk_requests())
def test_no_5xx_from_junk_bodies(client, request):
    _check(client, request)


def test_the_served_schema_is_the_fuzzed_one(client):
    served = client.get("/openapi.json").json()
    assert {(m, p) for m, p, _ in OPERATIONS} == {
        (m.upper(), p) for p, ops in served["paths"].items() for m in ops
    }
    assert len(OPERATIONS) >= 20
    # And the service answered everything above: still ready and working.
    assert client.get("/readyz").status_code == 200
    z = {"latents": [[0.0] * 8]}
    assert client.post("/v1/decode", json=z).status_code == 200
    assert struct.calcsize("f") == 4
