"""The gRPC port holds against hostile clients as the HTTP port does, through a real `vae-serve` on 127.0.0.1.

The clients speak HTTP/2 frames by hand (tests/hostile_inputs.py's RawH2) to do what grpcio's own client
never does: stall a message halfway, never read an answer, hold sockets without a preface, open more streams
than allowed. Bounds are set small (a second or two) so that each test ends in seconds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from hostile_inputs import RawH2, grpc_message
from serving import ROOT, committed_model, free_port, vae_serve

from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


# Every bound small, so that each test ends in a few seconds.
SMALL_BOUNDS = {
    "VAE_BODY_TIMEOUT_S": "1", "VAE_HEADER_TIMEOUT_S": "1", "VAE_SEND_TIMEOUT_S": "1",
    "VAE_REQUEST_TIMEOUT_S": "3", "VAE_GRPC_MAX_CONNECTION_AGE_S": "2", "VAE_GRPC_MAX_CONNECTIONS": "16",
    "VAE_GRPC_MAX_STREAMS_PER_CONNECTION": "4",
}  # fmt: skip


@contextmanager
def grpc_server(tmp_path: Path, **env: str) -> Iterator[tuple[str, int, int]]:
    """(HTTP url, gRPC port, pid) of a `vae-serve` over mnist-2d with `env` on top."""
    port = free_port()
    models = committed_model(tmp_path, "mnist-2d")
    with vae_serve(models, tmp_path / "server.log", env={"VAE_GRPC_PORT": str(port), **env}) as (url, proc):
        yield url, port, proc.pid


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int, Path]]:
    root = tmp_path_factory.mktemp("grpc-guard")
    with grpc_server(root, **SMALL_BOUNDS) as (url, port, pid):
        yield url, port, pid, root / "server.log"


def _ready(port: int, timeout_s: float = 3) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return f"ready={stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s).ready}"
        except grpc.RpcError as exc:
            return exc.code().name


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_second_server_on_the_grpc_port_fails_at_start(server, tmp_path):
    _, port, _, _ = server
    env = {
        **os.environ, "VAE_MODELS_DIR": str(committed_model(tmp_path / "second", "mnist-2d")),
        "VAE_PROVIDER": "cpu", "VAE_PORT": str(free_port()), "VAE_HOST": "127.0.0.1",
        "VAE_GRPC_PORT": str(port), "VAE_WORKERS": "1", "VAE_RELOAD_INTERVAL_S": "0",
    }  # fmt: skip
    second = subprocess.run(
        [sys.executable, "-m", "service.server.cli"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert second.returncode != 0
    assert f"gRPC: cannot bind 127.0.0.1:{port}" in second.stdout + second.stderr
    assert _ready(port) == "ready=True"  # the first server still has its clients


def test_an_unknown_15_mb_model_name_is_not_found_with_a_short_message(server):
    _, port, pid, _ = server
    before = _rss(pid)
    options = [("grpc.max_send_message_length", 64 * MB)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="m" * (15 * MB))),
            (stub.ModelInfer, pb.ModelInferRequest(model_name="m" * (15 * MB))),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=20)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(info.value.details()) < 300 and f"({15 * MB} characters)" in info.value.details()
    assert _rss(pid) - before < 200 * MB


def test_a_stalled_partial_message_is_dropped_and_others_are_served(server):
    _, port, _, log_path = server

    async def scenario() -> tuple[list[str | None], str]:
        conn = await RawH2.open(port, answer_pings=True)
        streams = [1, 3, 5, 7]
        for stream in streams:
            conn.start_call(stream)
            head = grpc_message(b"\x01" * (2 * MB), declared=15 * MB)  # 15 MB declared, 2 MB sent
            await conn.send(stream, head, end=False, timeout_s=5)
        served = await asyncio.to_thread(_ready, port)  # another client, meanwhile
        ended = [await conn.wait_ended(s, 10) for s in streams]
        conn.close()
        return ended, served

    ended, served = asyncio.run(scenario())
    assert served == "ready=True"
    assert ended == ["end"] * 4  # each answered (DEADLINE_EXCEEDED trailers) and closed by the server
    assert "shedding gRPC calls: request message not received in time" in log_path.read_text()


def test_streams_beyond_the_per_connection_cap_are_refused(server):
    _, port, _, _ = server

    async def scenario() -> dict[int, str]:
        conn = await RawH2.open(port, answer_pings=True)
        await asyncio.sleep(0.3)  # the server's SETTINGS (max concurrent streams) arrive first
        for stream in range(1, 17, 2):  # 8 streams, headers only
            conn.start_call(stream)
        await asyncio.sleep(1)
        conn.close()
        return dict(conn.ended)

    ended = asyncio.run(scenario())
    assert sorted(s for s, how in ended.items() if how == "reset") == [9, 11, 13, 15]


def test_idle_sockets_on_the_grpc_port_cannot_take_the_http_ports_descriptors(server):
    url, port, pid, _ = server
    base = _fds(pid)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(100)]
    try:
        time.sleep(0.3)
        assert _fds(pid) <= base + 16 + 4  # the cap, whatever the attacker opens
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        deadline = time.monotonic() + 10  # sockets without a preface are closed after header_timeout_s
        while _ready(port, 1) != "ready=True" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ready(port) == "ready=True"
    finally:
        for s in socks:
            s.close()


def test_a_response_nobody_reads_is_freed_when_the_connection_ages_out(server):
    _, port, pid, log_path = server
    request = pb.ModelInferRequest(model_name="mnist-2d-decoder")
    request.inputs.add(name="z", datatype="FP32", shape=[4096, 2])
    request.raw_input_contents.append(np.zeros((4096, 2), np.float32).tobytes())  # a 12.8 MB answer
    message = grpc_message(request.SerializeToString())

    async def scenario() -> tuple[int, list[str | None]]:
        conn = await RawH2.open(port, window=0, answer_pings=True)  # a reader that never reads
        for stream in (1, 3, 5, 7):
            conn.start_call(stream)
            await conn.send(stream, message, end=True)
        deadline = time.monotonic() + 10
        while "responses not read within the send timeout" not in log_path.read_text():
            assert time.monotonic() < deadline, "the answers were never held"
            await asyncio.sleep(0.1)
        held = _rss(pid)
        ended = [await conn.wait_ended(s, 15) for s in (1, 3, 5, 7)]
        conn.close()
        return held, ended

    held, ended = asyncio.run(scenario())
    assert all(e in ("end", "reset", "closed") for e in ended), ended
    time.sleep(0.5)
    assert held - _rss(pid) > 30 * MB  # the four 12.8 MB answers were let go
    assert _ready(port) == "ready=True"
