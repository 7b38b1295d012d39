"""Faults and load, on loopback and bounded in time: client disconnects, onnxruntime errors, overload at 3x
capacity, hot reload under traffic, SIGTERM with requests in flight, and memory over a short soak."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving import free_port, until, wait_until, wait_until_ready

from service.main import create_app
from vae_contract.imaging import encode_png
from vae_contract.manifest import read_manifest, sha256_file, write_manifest

DIGIT = base64.b64encode(encode_png(np.full((1, 28, 28), 0.5, dtype=np.float32))).decode()
Z8 = [[0.1] * 8]


def _metric(client_or_text: Any, status: int) -> float:
    text = client_or_text if isinstance(client_or_text, str) else client_or_text.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vae_http_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- client disconnects -------------------------------------------------------------------------------------


async def _asgi_call(app: Any, path: str, body: bytes, receive_after_body: Any) -> list[dict[str, Any]]:
    """Call the ASGI app directly with a body, then whatever receive_after_body() returns; collect sends."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": receive_after_body is None}
        if receive_after_body is None:
            return {"type": "http.disconnect"}
        return await receive_after_body()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_client_that_disconnects_mid_body_is_a_quiet_499(models_dir, settings_for, caplog):
    async def main() -> tuple[list[dict[str, Any]], str]:
        app = create_app(settings_for(models_dir, reload_interval_s=0))
        async with app.router.lifespan_context(app):
            # The first half of a body, then the client is gone: Starlette raises ClientDisconnect.
            sent = await _asgi_call(app, "/v1/decode", b'{"latents": [[0.1, ', None)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.post("/v1/decode", json={"latents": Z8})).status_code == 200
                metrics = (await client.get("/metrics")).text
        return sent, metrics

    with caplog.at_level(logging.INFO):
        sent, metrics = asyncio.run(main())
    assert sent == []  # nothing is sent to a client that is gone
    assert _metric(metrics, 499) == 1 and _metric(metrics, 500) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any(" 499 " in r.getMessage() for r in caplog.records if r.name == "service.access")


def test_work_queued_for_a_client_that_went_away_never_runs(models_dir, settings_for):
    """A request waiting in the batcher's queue is dropped when its client disconnects."""

    async def main() -> tuple[list[int], list[dict[str, Any]], str]:
        app = create_app(settings_for(models_dir, reload_interval_s=0, inline_run_us=0))
        async with app.router.lifespan_context(app):
            batcher = app.state.registry.models["tiny"].decoder_batcher
            real_run, release, ran = batcher._run_fn, threading.Event(), []

            def slow_run(x: np.ndarray) -> Any:
                ran.append(len(x))
                release.wait(10)
                return real_run(x)

            batcher._run_fn = slow_run
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                first = asyncio.create_task(client.post("/v1/decode", json={"latents": Z8}))
                await until(lambda: ran)  # the first request's batch is running (and blocked)
                gone = asyncio.Event()

                async def disconnect_later() -> dict[str, Any]:
                    await gone.wait()
                    return {"type": "http.disconnect"}

                body = json.dumps({"latents": [[0.2] * 8] * 3}).encode()
                second = asyncio.create_task(_asgi_call(app, "/v1/decode", body, disconnect_later))
                await until(lambda: batcher.queued_items == 3)  # the second one queued behind the first
                gone.set()
                sent = await asyncio.wait_for(second, 5)
                release.set()
                assert (await first).status_code == 200
                assert (await client.post("/v1/decode", json={"latents": Z8})).status_code == 200
                metrics = (await client.get("/metrics")).text
        return ran, sent, metrics

    ran, sent, metrics = asyncio.run(main())
    assert ran == [1, 1]  # the first request, then the last one: the 3 rows of the departed client never ran
    assert sent == [] and _metric(metrics, 499) == 1


# --- onnxruntime errors -------------------------------------------------------------------------------------


def test_an_onnxruntime_error_is_a_generic_500_and_the_next_request_works(client, monkeypatch, caplog):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    batcher = client.app.state.registry.models["tiny"].decoder_batcher
    real_run, calls = batcher._run_fn, []

    def run_once_failing(x: np.ndarray) -> Any:  # Graph.run, raising once as a broken session would
        calls.append(len(x))
        if len(calls) == 1:
            raise Fail(
                "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Gemm node"
            )
        return real_run(x)

    monkeypatch.setattr(batcher, "_run_fn", run_once_failing)
    with caplog.at_level(logging.ERROR):
        r = client.post("/v1/decode", json={"latents": Z8})
    assert r.status_code == 500
    assert r.json() == {"error": "inference failed; the error was logged", "error_type": "inference_failed"}
    for leak in ("Traceback", "ONNXRuntimeError", "Gemm", "File ", ".py", "/"):
        assert leak not in r.text.replace("\\/", ""), leak
    assert any("Fail" in rec.getMessage() for rec in caplog.records)  # the cause is in the log
    assert client.post("/v1/decode", json={"latents": Z8}).status_code == 200


def test_an_unexpected_exception_is_a_generic_500_without_traceback(client, monkeypatch):
    model = client.app.state.registry.models["tiny"]

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("/secret/path/model.onnx")

    monkeypatch.setattr(model, "sample", broken)
    monkeypatch.setattr(client._transport, "raise_server_exceptions", False)  # answer as a server would
    r = client.post("/v1/sample", json={"model": "tiny"})
    assert r.status_code == 500 and r.json()["error_type"] == "inference_failed"
    assert "secret" not in r.text and "Traceback" not in r.text and "KeyError" not in r.text
    monkeypatch.undo()
    assert client.post("/v1/sample", json={"model": "tiny"}).status_code == 200


# --- overload -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overload_at_three_times_capacity_gets_only_200s_and_fast_503s(models_dir, settings_for, app_runner):
    # Capacity: 4 items in the running batch + 16 queued = 5 requests of n=4; 15 clients is 3x that.
    settings = settings_for(
        models_dir, reload_interval_s=0, inline_run_us=0, max_batch_size=4, max_queue=16, max_sample_n=4,
        max_images_per_request=4, max_latents_per_request=16, max_interpolate_steps=16, max_manifold_size=4,
        retry_after_s=2,
    )  # fmt: skip

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[tuple[int, dict[str, str], float]]:
        batcher = app.state.registry.models["tiny"].decoder_batcher
        real_run = batcher._run_fn

        ran: list[int] = []

        def slow_run(x: np.ndarray) -> Any:
            ran.append(len(x))
            time.sleep(0.02)  # a slower model: every batch takes 20 ms
            return real_run(x)

        batcher._run_fn = slow_run

        async def one(i: int) -> tuple[int, dict[str, str], float]:
            started = time.perf_counter()
            r = await client.post("/v1/sample", json={"model": "tiny", "n": 4, "seed": i})
            if r.status_code == 200:
                assert len(r.json()["images"]) == 4
            else:
                assert r.json()["error_type"] == "overloaded", r.text
            return r.status_code, dict(r.headers), time.perf_counter() - started

        results = []
        for _ in range(3):  # three waves of 15 concurrent clients
            results += await asyncio.gather(*(one(i) for i in range(15)))
        batcher._run_fn = real_run
        accepted = sum(1 for status, _, _ in results if status == 200)
        # Refused at once, not after queueing: the graph ran exactly the accepted requests' items.
        assert sum(ran) == 4 * accepted, (sum(ran), accepted)
        assert (await client.post("/v1/sample", json={"model": "tiny", "n": 4})).status_code == 200
        return results

    results = app_runner(settings, scenario)
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) == {200, 503}, statuses
    # Each wave: the queue admits 4 requests (16 items) while a batch runs; the rest are refused at once.
    assert statuses[200] >= 9 and statuses[503] >= 15, statuses
    for status, headers, _ in results:
        if status == 503:
            assert headers["retry-after"] == "2"


# --- hot reload ---------------------------------------------------------------------------------------------


def _new_version(models: Path, name: str, version: int, *, broken: bool = False) -> None:
    """Copy version 1 to `version` (manifest updated), as an export would write it; broken: a corrupt graph
    whose manifest hash matches, so only onnxruntime can refuse it."""
    staging = models / f".staging-{name}-{version}"
    shutil.copytree(models / name / "1", staging)
    manifest = read_manifest(staging)
    update: dict[str, Any] = {"version": version}
    if broken:
        (staging / manifest.encoder.file).write_bytes(b"\x08\x07 this is not an onnx graph")
        sha = sha256_file(staging / manifest.encoder.file)
        update["encoder"] = manifest.encoder.model_copy(update={"sha256": sha})
    write_manifest(staging, manifest.model_copy(update=update))
    staging.rename(models / name / str(version))  # appears at once, complete


TRAFFIC = 12  # requests answered in each phase of the hot-reload test: three rounds of its four clients


@pytest.mark.slow
def test_hot_reload_under_traffic_drops_nothing(model_copy, settings_for, app_runner, caplog):
    settings = settings_for(model_copy, reload_interval_s=0.1)

    async def scenario(client: httpx.AsyncClient, app: Any) -> tuple[Counter[int], dict[str, Any], Any]:
        statuses: Counter[int] = Counter()
        versions: Counter[int] = Counter()
        stop = asyncio.Event()

        async def traffic(i: int) -> None:
            while not stop.is_set():
                for path, body in (
                    ("/v1/decode", {"model": "tiny", "latents": Z8}),
                    ("/v1/reconstruct", {"model": "tiny", "images": [DIGIT]}),
                    ("/v1/sample", {"model": "tiny", "n": 2, "seed": i}),
                ):
                    r = await client.post(path, json=body)
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        versions[r.json()["version"]] += 1

        async def version_of(name: str) -> Any:
            models = (await client.get("/v1/models")).json()["models"]
            return next(m for m in models if m["name"] == name)

        async def wait_for(predicate: Any, timeout: float = 20) -> None:
            deadline = time.monotonic() + timeout
            while not await predicate():
                assert time.monotonic() < deadline, "timed out"
                await asyncio.sleep(0.05)

        def answered() -> int:
            return sum(statuses.values())

        tasks = [asyncio.create_task(traffic(i)) for i in range(4)]
        await until(lambda: versions[1] >= TRAFFIC, 20)  # traffic on v1 before v2 appears
        await asyncio.to_thread(_new_version, model_copy, "tiny", 2)

        async def on_v2() -> bool:
            return (await version_of("tiny"))["version"] == 2

        await wait_for(on_v2)
        await until(lambda: versions[2] >= TRAFFIC, 20)  # and on v2 before the broken v3 appears
        await asyncio.to_thread(_new_version, model_copy, "tiny", 3, broken=True)

        async def refused() -> bool:
            return (await version_of("tiny"))["reload_error"] is not None

        await wait_for(refused)
        after_refusal = answered() + TRAFFIC
        await until(lambda: answered() >= after_refusal, 20)  # still answered once v3 is refused
        stop.set()
        await asyncio.gather(*tasks)
        ready = (await client.get("/readyz")).json()
        return statuses, {"ready": ready, "tiny": await version_of("tiny")}, versions

    with caplog.at_level(logging.INFO):
        statuses, state, versions = app_runner(settings, scenario)
    assert set(statuses) == {200}, statuses  # not one failed request
    assert versions[1] > 0 and versions[2] > 0 and set(versions) == {1, 2}
    tiny = state["tiny"]
    assert tiny["version"] == 2 and tiny["ready"] and "version 3" in tiny["reload_error"]
    assert "onnxruntime cannot load" in tiny["reload_error"]
    ready = state["ready"]
    assert ready["ready"] and ready["versions"]["tiny"] == 2 and "tiny" in ready["reload_failures"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("tiny v2 loaded" in m and "swapped in" in m for m in messages)
    assert any("tiny v3 NOT loaded (still serving v2)" in m for m in messages)


def test_sighup_reloads_at_once(model_copy, settings_for, app_runner):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    settings = settings_for(model_copy, reload_interval_s=0)

    async def scenario(client: httpx.AsyncClient, app: Any) -> Any:
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
            pytest.fail("the app installed no SIGHUP handler")
        _new_version(model_copy, "tiny-2d", 2)
        assert (await client.get("/readyz")).json()["versions"]["tiny-2d"] == 1  # no polling
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if (await client.get("/readyz")).json()["versions"]["tiny-2d"] == 2:
                break
            await asyncio.sleep(0.02)
        return (await client.get("/v1/manifold", params={"model": "tiny-2d", "size": 2})).json()

    body = app_runner(settings, scenario)
    assert body["version"] == 2
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # restored at shutdown


# --- a real server process: soak (memory), then SIGTERM with requests in flight -----------------------------


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_soak_memory_then_sigterm_drains_in_flight_requests(models_dir, tmp_path):
    port = free_port()
    env = {
        **os.environ, "VAE_MODELS_DIR": str(models_dir), "VAE_PROVIDER": "cpu", "VAE_PORT": str(port),
        "VAE_HOST": "127.0.0.1", "VAE_DRAIN_S": "1", "VAE_RELOAD_INTERVAL_S": "0",
        "VAE_INTRA_OP_THREADS": "1", "VAE_WORKERS": "1",  # one process: the server whose RSS is measured
    }  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.server.cli"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ready(url, 60, proc), f"server did not become ready:\n{log_path.read_text()}"

        # --- soak: 3000 requests on 4 keep-alive connections; RSS measured after a warm-up ---
        bodies = [
            ("/v1/decode", {"latents": [[0.1] * 8] * 4}),
            ("/v1/sample", {"n": 2}),
            ("/v1/encode", {"images": [DIGIT]}),
            ("/v1/reconstruct", {"images": [DIGIT]}),
        ]

        def hammer(count: int, failures: list[int]) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                for i in range(count):
                    path, body = bodies[i % len(bodies)]
                    status = c.post(path, json=body).status_code
                    if status != 200:
                        failures.append(status)

        failures: list[int] = []
        hammer(200, failures)
        before = _rss_kb(proc.pid)
        threads = [threading.Thread(target=hammer, args=(700, failures)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = _rss_kb(proc.pid)
        assert failures == []
        assert after - before < 50 * 1024, f"RSS grew {(after - before) / 1024:.1f} MB over 3000 requests"

        # --- SIGTERM: an upload in flight, traffic running, readiness goes 503 first, then exit 0 ---
        body = json.dumps({"latents": [[0.3] * 8] * 2}).encode()
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = (
            f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        slow.sendall(head + body[:10])  # in flight: the server is waiting for the rest of the body

        stop = threading.Event()
        statuses: Counter[Any] = Counter()

        def traffic() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        statuses[c.post("/v1/sample", json={"n": 16}).status_code] += 1
                    except httpx.TransportError as exc:
                        statuses[type(exc).__name__] += 1

        runners = [threading.Thread(target=traffic) for _ in range(3)]
        for t in runners:
            t.start()
        wait_until(lambda: statuses[200] >= 3, 30)  # traffic is flowing when the signal arrives
        proc.send_signal(signal.SIGTERM)
        readyz: list[int] = []
        deadline = time.monotonic() + 5
        while not readyz or readyz[-1] != 503:
            readyz.append(httpx.get(f"{url}/readyz", timeout=5).status_code)
            assert time.monotonic() < deadline
        stop.set()  # a load balancer stops sending once readiness fails
        for t in runners:
            t.join(30)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # still alive while draining
        assert set(statuses) == {200}, statuses

        deadline = time.monotonic() + 15  # once the drain period (1 s) is over, the server stops listening...
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "still listening long after the drain period"
            time.sleep(0.1)
        assert proc.poll() is None  # ...but waits for the request still in flight
        slow.sendall(body[10:])
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = slow.recv(65536)
            if not chunk:
                break
            response += chunk
        slow.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert b'"images"' in response
        assert b"\r\nserver:" not in response.lower()  # no server banner (and no version) in headers
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "SIGTERM: /readyz now answers 503" in log


def test_a_refused_version_is_retried_only_once_its_files_change(
    model_copy, settings_for, app_runner, caplog
):
    """A copy still in progress (hash mismatch) is refused, not retried on every poll, and loads once done."""
    settings = settings_for(model_copy, reload_interval_s=0)
    decoder = model_copy / "tiny" / "2" / "decoder.onnx"

    async def scenario(client: httpx.AsyncClient, app: Any) -> list[Any]:
        registry = app.state.registry
        _new_version(model_copy, "tiny", 2)
        complete = decoder.read_bytes()
        decoder.write_bytes(complete[: len(complete) // 2])  # the copy is half done
        seen: list[Any] = [await registry.reload()]
        seen.append(await registry.reload())  # unchanged since: not tried again
        decoder.write_bytes(complete)
        seen.append(await registry.reload())
        seen.append(
            (await client.post("/v1/decode", json={"model": "tiny", "latents": Z8})).json()["version"]
        )
        seen.append((await client.get("/readyz")).json()["reload_failures"])
        return seen

    with caplog.at_level(logging.ERROR):
        seen = app_runner(settings, scenario)
    refusals = [r for r in caplog.records if "NOT loaded" in r.getMessage()]
    assert len(refusals) == 1 and "sha256 mismatch" in refusals[0].getMessage()
    assert seen == [[], [], ["tiny v2"], 2, {}]
