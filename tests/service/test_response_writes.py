"""A response's head and body leave in one write; nothing is ever held back past the end of a response.

The cycle's side is played by the real uvicorn RequestResponseCycle, driven with ASGI messages as an app
sends them; the connection's side by a transport that records each write call.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from service.server.response_writes import HeldHeadTransport, hold_head


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("writelines", b"".join(bytes(d) for d in list_of_data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def]
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(transport: RecordingTransport, method: str = "GET", keep_alive: bool = True, expect_100=False):
    completed: list[bool] = []
    scope = {"type": "http", "method": method, "http_version": "1.1", "path": "/", "headers": []}
    cycle = RequestResponseCycle(
        scope=scope,  # type: ignore[arg-type]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(True),
    )
    hold_head(cycle)
    return cycle, completed


def _start(length: int | None, status: int = 200) -> dict:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


def in_loop(test):
    """Run an async test body on a fresh event loop (the suite has no async plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


HEAD_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n"


@in_loop
async def test_a_content_length_response_goes_out_in_one_write():
    transport = RecordingTransport()
    cycle, completed = _cycle(transport)
    await cycle.send(_start(7))
    assert transport.calls == []  # the head waits for its body
    await cycle.send({"type": "http.response.body", "body": b'{"a":1}'})
    assert transport.calls == [("writelines", HEAD_200 + b'{"a":1}')]
    assert completed == [True] and cycle.response_complete


@in_loop
async def test_a_body_in_several_messages_is_written_as_it_comes():
    transport = RecordingTransport()
    cycle, _ = _cycle(transport)
    await cycle.send(_start(7))
    await cycle.send({"type": "http.response.body", "body": b'{"a"', "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b":1}"})
    assert transport.calls == [("writelines", HEAD_200 + b'{"a"'), ("write", b":1}")]


@in_loop
async def test_a_chunked_response_sends_its_head_at_once():
    transport = RecordingTransport()
    cycle, _ = _cycle(transport)
    await cycle.send(_start(None))
    assert transport.calls == [
        ("write", b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
    ]
    await cycle.send({"type": "http.response.body", "body": b"x"})
    assert transport.calls[1:] == [("write", b"1\r\nx\r\n0\r\n\r\n")]


@pytest.mark.parametrize("method", ["HEAD", "GET"])
@in_loop
async def test_a_response_without_body_bytes_still_sends_its_head_when_it_completes(method):
    transport = RecordingTransport()
    cycle, completed = _cycle(transport, method=method)
    await cycle.send(_start(7 if method == "HEAD" else 0))
    await cycle.send({"type": "http.response.body", "body": b""})
    length = b"7" if method == "HEAD" else b"0"
    head = HEAD_200.replace(b"content-length: 7", b"content-length: " + length)
    assert b"".join(data for _, data in transport.calls) == head
    assert completed == [True]


@in_loop
async def test_the_head_is_flushed_before_the_connection_closes():
    transport = RecordingTransport()
    cycle, _ = _cycle(transport, keep_alive=False)
    await cycle.send(_start(7))
    await cycle.send({"type": "http.response.body", "body": b'{"a":1}'})
    assert [call for call, _ in transport.calls] == ["writelines", "close"]
    assert transport.calls[0][1].endswith(b'{"a":1}') and b"connection: close" in transport.calls[0][1]


@in_loop
async def test_a_close_after_the_head_alone_sends_the_head_first():
    # An app that fails after starting its response: uvicorn closes the connection; the client still gets
    # the head it would have got without holding.
    transport = RecordingTransport()
    cycle, _ = _cycle(transport)
    await cycle.send(_start(7))
    cycle.transport.close()
    assert transport.calls == [("write", HEAD_200), ("close", b"")]


@in_loop
async def test_100_continue_is_never_held():
    transport = RecordingTransport()
    cycle, _ = _cycle(transport, method="POST", expect_100=True)
    cycle.more_body = False
    cycle.message_event.set()
    await cycle.receive()
    assert transport.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]


def test_other_transport_calls_reach_the_connection():
    transport = RecordingTransport()
    held = HeldHeadTransport(transport, _cycle(transport)[0])
    assert held.get_extra_info("peername") == ("127.0.0.1", 1)
    assert not held.is_closing()
    held.close()
    assert held.is_closing()
