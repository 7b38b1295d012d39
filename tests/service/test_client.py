"""The typed client against a live uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx_models
import pytest

from service.client import AsyncVAEClient, VAEClient, VAEServiceError, png_to_array

# Models built with onnx.helper (tests/onnx_models.py): no torch, no training.
models_dir = onnx_models.models_dir


def test_sync_client_covers_every_route(models_dir, settings_for, live, digit_pngs, mnist_digits):
    with live(settings_for(models_dir)) as url, VAEClient(url) as vae:
        assert vae.health() and vae.ready()
        models = vae.models()
        assert models["default_model"] == "tiny"
        assert vae.model("tiny-2d")["latent_dim"] == 2

        enc = vae.encode(digit_pngs[:3], sample=True, seed=4)
        assert enc.mean.shape == (3, 8) and enc.z is not None and enc.seed == 4
        from_arrays = vae.encode(list(mnist_digits[0][:3]))  # float (C, H, W) arrays are sent as PNG
        np.testing.assert_allclose(from_arrays.mean, enc.mean, atol=1e-6)
        emb = vae.encode_npy(digit_pngs[:3])
        np.testing.assert_array_equal(emb, enc.mean)

        images = vae.decode(emb)
        assert images.shape == (3, 1, 28, 28) and images.dtype == np.float32

        sample = vae.sample(4, seed=9, temperature=0.7)
        assert len(sample.images) == 4 and sample.latents.shape == (4, 8) and sample.seed == 9
        assert png_to_array(sample.images[0]).shape == (1, 28, 28)
        assert vae.sample(4, seed=9, temperature=0.7).images == sample.images
        drawn = vae.sample(4, seed=9, temperature=0.7, pixels="sample", pixel_temperature=0.3)
        assert sample.pixels == "mean" and drawn.pixels == "sample" and drawn.images != sample.images

        rec = vae.reconstruct(digit_pngs[:2])
        assert rec.scores.shape == (2,) and rec.mse.shape == (2,) and len(rec.images) == 2
        assert rec.novelty is not None and rec.novelty.shape == (2,)
        assert rec.p_values is None and rec.novel is None  # the fixture models ship no calibration file
        assert vae.reconstruct(digit_pngs[:1], alpha=0.2).novelty is not None

        path = vae.interpolate(images=digit_pngs[:2], steps=5, method="slerp")
        np.testing.assert_array_equal(path.latents[0], enc.mean[0])
        line = vae.interpolate(latents=np.array([[0.0, 1.0], [1.0, 0.0]]), steps=3, model="tiny-2d")
        assert line.latents.shape == (3, 2) and line.method == "lerp"
        assert vae.manifold(model="tiny-2d", size=3)[:8] == b"\x89PNG\r\n\x1a\n"

        with pytest.raises(VAEServiceError) as info:
            vae.sample(1, model="missing")
        assert info.value.status == 404 and info.value.error_type == "model_not_found"
        assert info.value.request_id
        with pytest.raises(VAEServiceError) as info:
            vae.decode(np.zeros((1, 3), np.float32))
        assert info.value.status == 422 and "latent_dim" in info.value.message


def test_async_client_with_concurrent_calls_and_api_key(models_dir, settings_for, live):
    async def main(url: str):
        async with AsyncVAEClient(url, api_key="s3cret") as vae:
            assert await vae.ready()
            samples = await asyncio.gather(*(vae.sample(2, seed=s) for s in range(8)))
            decoded = await vae.decode(samples[3].latents)
            models = await vae.models()
        async with AsyncVAEClient(url) as anonymous:
            with pytest.raises(VAEServiceError) as info:
                await anonymous.models()
        return samples, decoded, models, info.value

    with live(settings_for(models_dir, api_keys="s3cret")) as url:
        samples, decoded, models, error = asyncio.run(main(url))
    assert [s.seed for s in samples] == list(range(8))
    assert len({s.images[0] for s in samples}) == 8  # distinct seeds, distinct images
    assert decoded.shape == (2, 1, 28, 28)
    assert models["default_model"] == "tiny"
    assert error.status == 401 and error.error_type == "unauthorized"


def test_embeddings_with_version_pinning_and_dimensions(models_dir, settings_for, live, digit_pngs):
    with live(settings_for(models_dir)) as url, VAEClient(url) as vae:
        means = vae.encode(digit_pngs[:3]).mean
        emb = vae.embeddings(digit_pngs[:3])  # the default model, newest version
        assert (emb.model, emb.version, emb.dimensions) == ("tiny", 1, None)
        np.testing.assert_array_equal(emb.vectors, means)  # float32 bytes on the wire: exact
        pinned = vae.embeddings(digit_pngs[:3], model="tiny", version=1, dimensions=3)
        assert pinned.vectors.shape == (3, 3) and pinned.dimensions is not None
        np.testing.assert_array_equal(pinned.vectors, means[:, pinned.dimensions])
        with pytest.raises(VAEServiceError) as info:
            vae.embeddings(digit_pngs[:1], model="tiny", version=2)
        assert info.value.status == 404 and "loaded: [1]" in info.value.message
        with pytest.raises(ValueError, match="version= needs model="):
            vae.embeddings(digit_pngs[:1], version=1)
        # version= on the other routes: body field, form field or query parameter, as each route takes it
        assert vae.encode(digit_pngs[:1], model="tiny", version=1).version == 1
        assert vae.sample(2, seed=1, version=1).version == 1
        np.testing.assert_array_equal(vae.decode(emb.vectors, version=1), vae.decode(emb.vectors))
        assert vae.manifold(model="tiny-2d", version=1, size=2)[:4] == b"\x89PNG"
        with pytest.raises(VAEServiceError) as info:
            vae.decode(emb.vectors, model="tiny", version=2)
        assert info.value.status == 404


def test_version_and_label_are_sent_only_when_given():
    from service.client import _Calls

    z = np.zeros((1, 8), np.float32)
    assert _Calls.decode(z, None, None).kwargs["params"] == {}
    assert _Calls.decode(z, "tiny", 2).kwargs["params"] == {"model": "tiny", "version": 2}
    assert _Calls.sample(4, None, None, 7, 1.0, None).kwargs["json"] == {
        "n": 4,
        "seed": 7,
        "temperature": 1.0,
    }
    body = _Calls.sample(4, "faces", 3, None, 0.5, "smiling").kwargs["json"]
    assert body == {"n": 4, "model": "faces", "version": 3, "temperature": 0.5, "label": "smiling"}
    body = _Calls.sample(1, None, None, None, 1.0, None, "sample", 0.0).kwargs["json"]
    assert body == {"n": 1, "temperature": 1.0, "pixels": "sample", "pixel_temperature": 0.0}
    assert _Calls.encode([b"png"], "tiny", 1, False, None).kwargs["data"] == {
        "model": "tiny", "version": "1", "sample": "false"
    }  # fmt: skip
    assert _Calls.manifold("tiny-2d", 1, 5).kwargs["params"] == {"size": 5, "model": "tiny-2d", "version": 1}
    assert _Calls.embeddings([b"png"], "tiny", 4, None).kwargs["json"]["model"] == "tiny@4"


def test_importing_the_client_loads_no_server_code():
    import subprocess
    import sys

    script = (
        "import sys, service.client\n"
        "heavy = ('onnxruntime', 'fastapi', 'starlette', 'uvicorn', 'grpc', 'PIL', 'pydantic',\n"
        "         'service.inference', 'vae_contract.imaging')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
