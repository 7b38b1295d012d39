"""Batching through the whole HTTP stack: isolation under concurrency, partial failure, overload, timeout."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import onnxruntime as ort
from serving import free_port, until, wait_until_ready

from service.inference import ModelRegistry

NPY = "application/x-npy"


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decoder_session(models_dir) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(models_dir / "tiny" / "1" / "decoder.onnx"), providers=["CPUExecutionProvider"]
    )


def registry_of(app) -> ModelRegistry:
    return app.state.service.registry


def test_concurrent_requests_each_get_their_own_results(models_dir, settings_for, app_runner):
    """64 decode and 32 sample requests at once; every answer equals the unbatched onnxruntime result."""
    rng = np.random.default_rng(0)
    latents = [rng.standard_normal((int(rng.integers(1, 5)), 8)).astype(np.float32) for _ in range(64)]
    settings = settings_for(models_dir, max_delay_ms=20, max_batch_size=64)

    async def scenario(client, app):
        decodes = [
            client.post("/v1/decode", json={"latents": z.tolist()}, headers={"accept": NPY}) for z in latents
        ]
        samples = [
            client.post("/v1/sample?output=latents", json={"n": 2, "seed": s}, headers={"accept": NPY})
            for s in range(32)
        ]
        results = await asyncio.gather(*decodes, *samples)
        text = (await client.get("/metrics")).text
        return results, text

    results, metrics = app_runner(settings, scenario)
    session = decoder_session(models_dir)
    for z, r in zip(latents, results[:64], strict=True):
        assert r.status_code == 200
        (alone,) = session.run(None, {"z": z})
        np.testing.assert_allclose(load_npy(r.content), np.clip(alone, 0, 1), atol=1e-6)
    for seed, r in enumerate(results[64:]):
        expected = np.random.default_rng(seed).standard_normal((2, 8), dtype=np.float32)
        np.testing.assert_array_equal(load_npy(r.content), expected)
    # Requests were really combined: fewer decoder runs than requests (warm-up runs are not counted).
    runs = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('vae_batch_size_count{graph="decoder",model="tiny",version="1"}')
    )
    assert runs < 96


def test_a_failing_batch_fails_only_its_culprit(models_dir, settings_for, app_runner):
    settings = settings_for(models_dir, max_delay_ms=20)
    poison = 42.0

    async def scenario(client, app):
        batcher = registry_of(app).get("tiny").decoder_batcher
        real = batcher._run_fn

        def fragile(x):
            if (x == poison).any():
                raise RuntimeError("simulated onnxruntime failure /secret/path")
            return real(x)

        batcher._run_fn = fragile
        bodies = [{"latents": [[float(i)] + [0.0] * 7]} for i in range(8)]
        bodies[3] = {"latents": [[poison] + [0.0] * 7]}
        results = await asyncio.gather(*(client.post("/v1/decode", json=b) for b in bodies))
        after = await client.post("/v1/decode", json=bodies[0])
        return results, after

    results, after = app_runner(settings, scenario)
    assert results[3].status_code == 500
    assert results[3].json() == {
        "error": "inference failed; the error was logged",
        "error_type": "inference_failed",
    }
    assert "secret" not in results[3].text
    assert [r.status_code for i, r in enumerate(results) if i != 3] == [200] * 7
    assert after.status_code == 200


def test_a_full_queue_gives_fast_503_with_retry_after(models_dir, settings_for, app_runner):
    settings = settings_for(
        models_dir, max_queue=4, max_batch_size=4, max_images_per_request=4, max_latents_per_request=4,
        max_sample_n=4, max_interpolate_steps=4, max_manifold_size=2, retry_after_s=2,
        inline_run_us=0,  # the slow stand-in below must run in the worker thread, as a slow model would
    )  # fmt: skip

    async def scenario(client, app):
        batcher = registry_of(app).get("tiny").decoder_batcher
        real = batcher._run_fn
        started, release = threading.Event(), threading.Event()

        def slow(x):  # a batch that runs until the test lets it finish
            started.set()
            release.wait(10)
            return real(x)

        batcher._run_fn = slow
        running = asyncio.create_task(client.post("/v1/sample", json={"n": 4, "seed": 1}))
        await until(started.is_set)  # taken by the worker: the queue is empty again
        queued = asyncio.create_task(client.post("/v1/sample", json={"n": 4, "seed": 2}))
        await until(lambda: batcher.queued_items == 4)  # waiting: the queue holds 4 items
        refused = await client.post("/v1/sample", json={"n": 1, "seed": 3})
        refused_while_running = not running.done()
        release.set()
        return await running, await queued, refused, refused_while_running

    running, queued, refused, refused_while_running = app_runner(settings, scenario)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error_type"] == "overloaded"
    assert refused_while_running  # it did not wait for the slow batch
    assert running.status_code == 200 and queued.status_code == 200


def test_a_slow_inference_times_out_with_504(models_dir, settings_for, app_runner):
    settings = settings_for(models_dir, request_timeout_s=0.2, inline_run_us=0)

    async def scenario(client, app):
        batcher = registry_of(app).get("tiny").decoder_batcher
        real = batcher._run_fn

        release, finished = threading.Event(), threading.Event()

        def slow(x):  # runs past the request timeout, until the test lets it finish
            release.wait(10)
            try:
                return real(x)
            finally:
                finished.set()

        batcher._run_fn = slow
        timed_out = await client.post("/v1/sample", json={"n": 1})
        batcher._run_fn = real
        release.set()
        await until(finished.is_set)  # the abandoned run is over: the next request does not wait behind it
        return timed_out, await client.post("/v1/sample", json={"n": 1})

    timed_out, after = app_runner(settings, scenario)
    assert timed_out.status_code == 504 and timed_out.json()["error_type"] == "timeout"
    assert after.status_code == 200


@contextmanager
def live_app(settings):
    """The app and its base URL, served by uvicorn (vae-serve's guarded HTTP protocol) in a thread."""
    import uvicorn

    from service.main import create_app
    from service.server.connections import GuardedHttpToolsProtocol

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            http=GuardedHttpToolsProtocol,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ready(url, 30), "server did not become ready"
        yield app, url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_request_whose_deadline_passes_in_the_queue_gets_504_and_its_job_never_runs(
    models_dir, settings_for
):
    """Request A's call hangs in onnxruntime; B queues behind it, C arrives after A's 504 while A's call still
    runs. B and C are answered 504 at their deadlines, their jobs are dropped (counted, never run), and no
    second call starts beside the hung one."""
    timeout_s = 1.0
    settings = settings_for(models_dir, request_timeout_s=timeout_s, inline_run_us=0, max_delay_ms=0)
    with live_app(settings) as (app, url):
        batcher = registry_of(app).get("tiny").decoder_batcher
        real = batcher._run_fn
        release, entered = threading.Event(), threading.Event()
        lock = threading.Lock()
        seen: list[float] = []  # the marker (first latent value) of every row that ran
        running = [0, 0]  # now, most at once

        def hanging(x):
            with lock:
                seen.extend(float(v) for v in x[:, 0])
                running[0] += 1
                running[1] = max(running)
            entered.set()
            try:
                release.wait(10)
                return real(x)
            finally:
                with lock:
                    running[0] -= 1

        batcher._run_fn = hanging

        def body(marker: float) -> dict:
            return {"model": "tiny", "latents": [[marker] + [0.0] * 7]}

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:

                async def timed(marker: float) -> tuple[httpx.Response, float]:
                    started = time.monotonic()
                    r = await client.post("/v1/decode", json=body(marker))
                    return r, time.monotonic() - started

                a = asyncio.create_task(timed(1.0))
                await until(entered.is_set)  # A's call is in onnxruntime and hangs there
                b = await timed(2.0)  # queued behind A until its deadline
                a = await a
                c = await timed(3.0)  # A has gone, its call has not: C queues too
                release.set()
                await until(lambda: running[0] == 0)
                d = await client.post("/v1/decode", json=body(4.0))
                metrics = (await client.get("/metrics")).text
                return a, b, c, d, metrics

        a, b, c, d, metrics = asyncio.run(scenario())
    for r, elapsed in (a, b, c):
        assert r.status_code == 504 and r.json()["error_type"] == "timeout"
        assert elapsed < timeout_s + 2.0  # generous: the deadline fired while the call still hung
    assert d.status_code == 200
    assert seen == [1.0, 4.0]  # B's and C's rows never ran
    assert running[1] == 1  # C did not start a call beside A's hung one
    dropped = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('vae_dropped_items_total{graph="decoder",model="tiny",version="1"}')
    )
    assert dropped == 2
