"""The HTTP layer defends itself, through a real `vae-serve` process and raw sockets on 127.0.0.1: idle
connections close, headers are capped in size and time, a stalled body is dropped, and sockets beyond the
connection cap never lock a new client out."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import committed_model, vae_serve

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc"),
]

GUARD = {
    "VAE_IDLE_TIMEOUT_S": "1",
    "VAE_HEADER_TIMEOUT_S": "1",
    "VAE_BODY_TIMEOUT_S": "1",
    "VAE_MAX_HEADER_BYTES": "8192",
    "VAE_SEND_TIMEOUT_S": "1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, int, Path]]:
    tmp = tmp_path_factory.mktemp("guard")
    log = tmp / "server.log"
    with vae_serve(committed_model(tmp), log, GUARD) as (url, _proc):
        yield url, int(url.rsplit(":", 1)[1]), log


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (recv raises on a 10 s silence)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_an_idle_connection_that_never_sends_a_request_is_closed(server):
    _, port, _ = server
    with _connect(port) as sock:
        assert _read_all(sock) == b""  # closed by the server (a 10 s silence would raise instead)


def test_a_keep_alive_connection_is_closed_once_idle(server):
    _, port, _ = server
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"status":"ok"}')


def test_stray_bytes_between_requests_do_not_keep_a_connection_open(server):
    _, port, _ = server
    with _connect(port) as sock:
        for _ in range(3):  # three CRLFs spread over 1.2 s: the idle clock (1 s) is not reset by them
            sock.sendall(b"\r\n")
            time.sleep(0.4)
        with pytest.raises(OSError):
            for _ in range(30):
                sock.sendall(b"\r\n")
                time.sleep(0.2)


def test_oversize_headers_get_431_and_the_connection_closes(server):
    url, port, _ = server
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MiB; the server answers after 8 KiB
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # the server closed while we were still sending
        try:
            response = _read_all(sock)
        except ConnectionResetError:
            response = b""  # unread bytes make the kernel reset instead of closing; closed either way
    if response:
        assert response.startswith(b"HTTP/1.1 431"), response[:100]
        body = json.loads(response.split(b"\r\n\r\n", 1)[1])
        assert body == {"error": "request headers exceed 8192 bytes", "error_type": "payload_too_large"}
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_headers_that_never_finish_get_408(server):
    _, port, _ = server
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 408"), response[:100]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error_type"] == "timeout"


def test_a_slowloris_trickle_is_cut_at_the_header_timeout(server):
    _, port, _ = server
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(OSError):
            for i in range(50):  # a header line every 0.1 s, for 5 s: far past the 1 s header deadline
                sock.sendall(f"X-{i}: y\r\n".encode())
                time.sleep(0.1)


def test_a_stalled_body_is_dropped_with_408_and_the_server_keeps_serving(server):
    url, port, log = server
    body = json.dumps({"latents": [[0.1, 0.2]]}).encode()
    with _connect(port) as sock:
        head = (
            "POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:5])  # then nothing
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 408"), response[:100]
    assert b"request body stalled" in response
    r = httpx.post(f"{url}/v1/decode", json={"latents": [[0.1, 0.2]]})
    assert r.status_code == 200
    text = log.read_text()
    assert " 499 " in text  # the app saw the client go away, quietly
    assert "Traceback" not in text


def test_a_client_that_stops_reading_its_response_is_cut_off(server):
    url, port, log = server
    body = json.dumps({"latents": [[0.1, 0.2]] * 4096}).encode()  # 4096 images: 12.8 MB of float32 npy
    head = (
        "POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Accept: application/x-npy\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that takes almost nothing
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 30
        while "stopped reading responses" not in log.read_text():  # and we never read
            assert time.monotonic() < deadline, "the server kept waiting for the reader"
            time.sleep(0.1)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
    assert received < 4096 * 784 * 4  # cut off before the whole response
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert "Traceback" not in log.read_text()


def test_an_upgrade_request_is_answered_as_http(server):
    _, port, log = server
    with _connect(port) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 200") and b'{"status":"ok"}' in response
    text = log.read_text()
    assert "upgrade requests answered as HTTP" in text and "Unsupported upgrade" not in text


def _socket_fds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith("socket:")
    return count


def _low_fd_limit() -> None:  # runs in the child before exec: a soft limit too low for the cap
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 200), hard))


def test_sockets_beyond_the_connection_cap_never_lock_a_new_client_out(tmp_path):
    env = {"VAE_MAX_CONNECTIONS": "16", "VAE_IDLE_TIMEOUT_S": "60", "VAE_HEADER_TIMEOUT_S": "60"}
    log = tmp_path / "server.log"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 16 + 256:
        pytest.skip("hard open-file limit too low")
    with vae_serve(committed_model(tmp_path), log, env, preexec_fn=_low_fd_limit) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        assert "open-file limit raised from 200" in log.read_text()
        # 200 sockets that never send a byte: far past the cap, and past the soft limit it started with.
        idle = [_connect(port) for _ in range(200)]
        try:
            r = httpx.get(f"{url}/healthz")  # a new client gets in: the oldest idle socket made room
            assert r.status_code == 200
            assert _socket_fds(proc.pid) <= 16 + 8  # the listener and a few in flight beside the cap
        finally:
            for sock in idle:
                sock.close()

        # 16 connections in the middle of their headers are not idle: the next one is refused with 503.
        busy = [_connect(port) for _ in range(16)]
        try:
            for sock in busy:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            deadline = time.monotonic() + 20
            refused = None
            while time.monotonic() < deadline:  # until the server has accepted all 16
                with _connect(port) as extra:
                    response = _read_all(extra)
                if response.startswith(b"HTTP/1.1 503"):
                    refused = response
                    break
                time.sleep(0.05)
            assert refused is not None
            assert b"retry-after: 1" in refused and b'"error_type": "overloaded"' in refused
        finally:
            for sock in busy:
                sock.close()
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/healthz").status_code != 200:  # once they are gone, clients get in again
            assert time.monotonic() < deadline
    text = log.read_text()
    assert "shedding connections (cap 16" in text
    assert "closed idle to admit a new one" in text and "refused at the cap (none idle)" in text
    assert text.count("shedding connections") <= 4  # rate-limited: a line per kind and 10 s, not per socket
    assert "Traceback" not in text


def test_the_guard_tells_the_batchers_how_many_clients_are_open(tmp_path):
    """The lifespan hands the app's state to uvicorn, which gives it to every connection's protocol: the guard
    reads its limits there and reports the open connections, which decide whether a call is alone."""
    import threading

    import uvicorn

    from service.config import Settings
    from service.main import create_app
    from service.server.connections import GuardedHttpToolsProtocol

    settings = Settings(
        models_dir=committed_model(tmp_path), provider="cpu", grpc_port=0, reload_interval_s=0
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=GuardedHttpToolsProtocol, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        clients = app.state.service.clients
        assert not clients.alone()  # no connection yet: the guard has not reported anything
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as first:
            assert first.get("/healthz").status_code == 200
            assert clients.alone()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as second:
                assert second.get("/healthz").status_code == 200
                assert not clients.alone()
    finally:
        server.should_exit = True
        thread.join(30)
