"""/v2 called the way other services call it: Triton's OIP client library against a live server."""

from __future__ import annotations

import numpy as np
import tritonclient.http as oip


def test_standard_oip_client_binary_and_json(models_dir, live, settings_for, client):
    z = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with live(settings_for(models_dir)) as url:
        triton = oip.InferenceServerClient(url.removeprefix("http://"))
        assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("tiny-decoder")
        meta = triton.get_model_metadata("tiny-decoder")
        assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 8]}]
        results = {}
        for binary in (True, False):
            tensor = oip.InferInput("z", list(z.shape), "FP32")
            tensor.set_data_from_numpy(z, binary_data=binary)
            wanted = oip.InferRequestedOutput("x", binary_data=binary)
            answer = triton.infer("tiny-decoder", [tensor], outputs=[wanted], request_id=f"r{binary}")
            assert answer.get_response()["id"] == f"r{binary}"
            results[binary] = answer.as_numpy("x")
        triton.close()
    assert results[True].shape == (4, 1, 28, 28) and results[True].dtype == np.float32
    np.testing.assert_array_equal(results[True], results[False])
    v1 = client.post(
        "/v1/decode", json={"latents": z.tolist(), "model": "tiny"}, headers={"Accept": "application/x-npy"}
    )
    np.testing.assert_allclose(np.load(__import__("io").BytesIO(v1.content)), results[True], atol=1e-6)
