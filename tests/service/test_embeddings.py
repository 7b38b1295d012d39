"""POST /v1/embeddings: OpenAI's shape, the official `openai` client against a live server, and the errors."""

from __future__ import annotations

import base64

import numpy as np
import onnx_models
import pytest

from service.http.routes.embeddings import order_by_kl

# Models built with onnx.helper (tests/onnx_models.py): no torch, no training.
models_dir, client = onnx_models.models_dir, onnx_models.client

pytestmark = pytest.mark.timeout(120)


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def means(client, pngs: list[bytes]) -> np.ndarray:
    resp = client.post("/v1/encode", json={"images": [b64(p) for p in pngs], "model": "tiny"})
    assert resp.status_code == 200, resp.text
    return np.asarray(resp.json()["mean"], dtype=np.float32)


def test_float_and_base64_are_the_posterior_means(client, digit_pngs):
    expected = means(client, digit_pngs[:3])
    inputs = [b64(digit_pngs[0]), "data:image/png;base64," + b64(digit_pngs[1]), b64(digit_pngs[2])]
    resp = client.post("/v1/embeddings", json={"model": "tiny", "input": inputs})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list" and body["model"] == "tiny@1"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["object"] for d in body["data"]] == ["embedding"] * 3
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    floats = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(floats, expected, atol=1e-6)
    assert resp.headers["x-model-version"] == "1"

    resp = client.post(
        "/v1/embeddings", json={"model": "tiny@1", "input": inputs, "encoding_format": "base64"}
    )
    packed = [base64.b64decode(d["embedding"]) for d in resp.json()["data"]]
    assert all(len(p) == 8 * 4 for p in packed)  # latent_dim float32 values each
    np.testing.assert_array_equal(np.stack([np.frombuffer(p, "<f4") for p in packed]), floats)

    single = client.post("/v1/embeddings", json={"model": "tiny", "input": inputs[0]}).json()
    assert len(single["data"]) == 1
    np.testing.assert_allclose(single["data"][0]["embedding"], expected[0], atol=1e-6)


def test_order_by_kl_against_a_hand_computation():
    # Per dimension KL = (m^2 + exp(lv) - 1 - lv) / 2, averaged over rows.
    mean = np.array([[0.0, 2.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    log_var = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.log(0.5)]], np.float32)
    # dim 0: 0; dim 1: (2 + 0) / 2 = 1.0; dim 2: (0.5 + (0.5 + 0.5 - 1 - log 0.5) / 2) / 2 = 0.4233
    np.testing.assert_array_equal(order_by_kl(mean, log_var), [1, 2, 0])
    # Equal KL (after rounding to 1e-3 nats) keeps index order.
    np.testing.assert_array_equal(order_by_kl(np.ones((2, 3), np.float32), np.zeros((2, 3))), [0, 1, 2])


def test_dimensions_keep_the_highest_kl_dimensions(client, digit_pngs):
    full = means(client, digit_pngs[:4])
    inputs = [b64(p) for p in digit_pngs[:4]]
    resp = client.post("/v1/embeddings", json={"model": "tiny", "input": inputs, "dimensions": 3})
    assert resp.status_code == 200, resp.text
    kept = [int(i) for i in resp.headers["x-embedding-dimensions"].split(",")]
    assert len(kept) == 3 and len(set(kept)) == 3
    short = np.asarray([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(short, full[:, kept], atol=1e-6)
    # A prefix of the full order: dimensions=k and dimensions=k+1 agree on the first k.
    again = client.post("/v1/embeddings", json={"model": "tiny", "input": inputs[:1], "dimensions": 8})
    order = [int(i) for i in again.headers["x-embedding-dimensions"].split(",")]
    assert order[:3] == kept and sorted(order) == list(range(8))


def test_dimension_order_is_the_reference_sets_kl(app_runner, settings_for, models_dir):
    from service.http.routes.embeddings import REFERENCE_N, REFERENCE_SEED, dimension_order
    from service.inference.model import draw_prior

    async def check(client, app):
        model = app.state.registry.get("tiny")
        reference = await model.decode(draw_prior(REFERENCE_N, 8, REFERENCE_SEED))
        enc = await model.encode(reference)
        kl = 0.5 * (enc.mean.astype(np.float64) ** 2 + np.exp(enc.log_var) - 1 - enc.log_var).mean(axis=0)
        order = await dimension_order(model)
        assert (await dimension_order(model)) is order  # computed once per model version
        return kl, order

    kl, order = app_runner(settings_for(models_dir), check)
    assert np.all(np.diff(np.round(kl[order], 3)) <= 0)  # descending KL


@pytest.mark.parametrize(
    ("body", "status", "error_type", "words"),
    [
        ({"model": "missing", "input": "x"}, 404, "model_not_found", "missing"),
        ({"model": "tiny@7", "input": "x"}, 404, "model_not_found", "loaded: [1]"),
        ({"model": "Tiny!", "input": "x"}, 422, "invalid_input", "model"),
        ({"model": "", "input": "x"}, 422, "invalid_input", "model"),
        ({"model": "tiny", "input": [1, 2, 3]}, 422, "invalid_input", "input"),
        ({"model": "tiny", "input": []}, 422, "invalid_input", "at least one"),
        ({"model": "tiny", "input": "not base64!"}, 422, "invalid_input", "base64"),
        ({"model": "tiny", "input": b64(b"\x89PNG\r\n\x1a\nnope")}, 422, "invalid_input", "input"),
        ({"model": "tiny", "input": "x", "encoding_format": "int8"}, 422, "invalid_input", "encoding_format"),
        ({"model": "tiny", "input": "x", "dimensions": 9}, 422, "invalid_input", "latent_dim, 8"),
        ({"model": "tiny", "input": "x", "dimensions": 0}, 422, "invalid_input", "dimensions"),
        ({"model": "tiny", "input": "x", "images": ["YWJj"]}, 422, "invalid_input", "'input'"),
        ({"model": "tiny", "input": "x", "temperature": 1}, 422, "invalid_input", "temperature"),
    ],
)
def test_errors_are_the_closed_set(client, body, status, error_type, words):
    resp = client.post("/v1/embeddings", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error_type"] == error_type
    assert words in resp.json()["error"]


def test_image_count_limit(serve_app, models_dir, digit_pngs):
    with serve_app(models_dir, max_images_per_request=2) as client:
        resp = client.post("/v1/embeddings", json={"model": "tiny", "input": [b64(digit_pngs[0])] * 3})
    assert resp.status_code == 422 and "at most 2" in resp.json()["error"]


def test_version_field_pins_like_name_at_version(client, digit_pngs):
    body = {"model": "tiny", "version": 1, "input": b64(digit_pngs[0])}
    assert client.post("/v1/embeddings", json=body).json()["model"] == "tiny@1"
    resp = client.post("/v1/embeddings", json={**body, "model": "tiny@1", "version": 2})
    assert resp.status_code == 422 and "version given twice" in resp.json()["error"]
    resp = client.post("/v1/embeddings", json={**body, "version": 3})
    assert resp.status_code == 404 and "loaded: [1]" in resp.json()["error"]


def test_official_openai_client_against_a_live_server(models_dir, settings_for, live, client, digit_pngs):
    openai = pytest.importorskip("openai")
    expected = means(client, digit_pngs[:2])
    inputs = [b64(p) for p in digit_pngs[:2]]
    with live(settings_for(models_dir, api_keys="s3cret")) as url:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0, timeout=30)
        # Default: the client asks for base64 and decodes the float32 bytes itself.
        answer = oai.embeddings.create(model="tiny", input=inputs)
        got = np.asarray([d.embedding for d in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert answer.model == "tiny@1" and answer.usage.prompt_tokens == 2
        floats = oai.embeddings.create(model="tiny@1", input=inputs[0], encoding_format="float", dimensions=2)
        assert len(floats.data) == 1 and len(floats.data[0].embedding) == 2
        with pytest.raises(openai.NotFoundError) as info:
            oai.embeddings.create(model="tiny@5", input=inputs)
        assert info.value.status_code == 404
        anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            anonymous.embeddings.create(model="tiny", input=inputs)
        oai.close()
        anonymous.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "tiny", "input": "DIGIT", "encoding_format": "base64", "dimensions": 2}, 200),
        ({"model": "tiny", "input": ["DIGIT"]}, 200),
        ({"model": "tiny@9", "input": "DIGIT"}, 404),
        ({"model": "tiny", "input": "DIGIT", "dimensions": 99}, 422),
    ],
)
def test_answers_match_the_published_schema(client, digit_pngs, body, status):
    import jsonschema

    spec = client.get("/openapi.json").json()
    raw = b64(digit_pngs[0])
    body = {k: ([raw] if v == ["DIGIT"] else raw if v == "DIGIT" else v) for k, v in body.items()}
    resp = client.post("/v1/embeddings", json=body)
    assert resp.status_code == status
    entry = spec["paths"]["/v1/embeddings"]["post"]["responses"][str(status)]
    schema = {**entry["content"]["application/json"]["schema"], "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(resp.json())
