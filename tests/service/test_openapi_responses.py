"""Every JSON body the service sends matches the schema its own /openapi.json declares for that status.

Models are built with onnx.helper (no torch): `lin` has latent_dim 2, so every /v1 operation, the manifold
included, answers for it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from onnx_models import write_model

from service.config import Settings
from service.main import create_app
from vae_contract.imaging import encode_png

pytestmark = pytest.mark.timeout(30)

PNG = base64.b64encode(encode_png(np.full((1, 8, 8), 0.5, dtype=np.float32))).decode()
Z = {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}

# (method, path template, concrete url, request kwargs)
CALLS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("get", "/healthz", "/healthz", {}),
    ("get", "/readyz", "/readyz", {}),
    ("get", "/v1/models", "/v1/models", {}),
    ("get", "/v1/models/{name}", "/v1/models/lin", {}),
    ("post", "/v1/encode", "/v1/encode", {"json": {"images": [PNG], "sample": True, "seed": 3}}),
    ("post", "/v1/decode", "/v1/decode", {"json": {"latents": [[0.0, 1.0]]}}),
    ("post", "/v1/sample", "/v1/sample", {"json": {"n": 2, "seed": 1}}),
    ("post", "/v1/reconstruct", "/v1/reconstruct", {"json": {"images": [PNG, PNG]}}),
    ("post", "/v1/interpolate", "/v1/interpolate", {"json": {"latents": [[0, 0], [1, 1]], "steps": 3}}),
    ("post", "/v1/interpolate", "/v1/interpolate", {"json": {"images": [PNG, PNG], "method": "slerp"}}),
    ("get", "/v1/manifold", "/v1/manifold?size=3", {}),
    # errors: each status's declared error schema
    ("post", "/v1/sample", "/v1/sample", {"json": {"n": 0}}),
    ("post", "/v1/decode", "/v1/decode", {"json": {"latents": [[0.0] * 3]}}),
    ("post", "/v1/sample", "/v1/sample", {"json": {"model": "nope"}}),
    ("post", "/v1/encode", "/v1/encode", {"content": b"x", "headers": {"content-type": "text/plain"}}),
    ("get", "/v1/models/{name}", "/v1/models/nope", {}),
    ("post", "/v2/models/{model_name}/infer", "/v2/models/lin-decoder/infer", {"json": {"inputs": [Z]}}),
    ("post", "/v2/models/{model_name}/infer", "/v2/models/lin-decoder/infer", {"json": {"inputs": []}}),
    ("post", "/v2/models/{model_name}/infer", "/v2/models/nope-decoder/infer", {"json": {"inputs": [Z]}}),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from starlette.testclient import TestClient

    root: Path = tmp_path_factory.mktemp("onnx-models")
    write_model(root, "lin")
    with TestClient(create_app(Settings(models_dir=root, provider="cpu"))) as client:
        yield client


@pytest.fixture(scope="module")
def spec(api: Any) -> dict[str, Any]:
    served: dict[str, Any] = api.get("/openapi.json").json()
    return served


def _schema_for(spec: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any] | None:
    responses = spec["paths"][path][method]["responses"]
    entry = responses.get(str(status))
    assert entry is not None, f"{method.upper()} {path} answered {status}, which its OpenAPI does not list"
    schema = entry.get("content", {}).get("application/json", {}).get("schema")
    return None if schema is None else {**schema, "components": spec["components"]}


@pytest.mark.parametrize(("method", "path", "url", "kwargs"), CALLS, ids=[f"{c[0]} {c[2]}" for c in CALLS])
def test_json_bodies_match_the_served_schema(api, spec, method, path, url, kwargs):
    r = api.request(method.upper(), url, **kwargs)
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    schema = _schema_for(spec, method, path, r.status_code)
    if schema is None:  # an operation that declares no JSON body for this status (e.g. OIP's free-form 200)
        assert path.startswith("/v2/") and r.status_code == 200, (path, r.status_code)
        return
    jsonschema.Draft202012Validator(schema).validate(r.json())


def test_the_calls_cover_every_v1_operation(spec):
    v1 = {
        (m, p)
        for p, ops in spec["paths"].items()
        for m in ops
        if p.startswith("/v1/") and p != "/v1/embeddings"
    }
    assert v1 <= {(m, p) for m, p, _, _ in CALLS}


def test_an_error_body_outside_the_closed_set_would_fail(spec):
    schema = _schema_for(spec, "post", "/v1/sample", 422)
    assert schema is not None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(json.loads('{"error": "x", "error_type": "oops"}'))
