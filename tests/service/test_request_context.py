"""The service's ASGI middlewares on their own. RequestContextMiddleware: the request id, and the disconnect
listener, which is up while a request waits, is shared with an app that listens itself, and is never left
behind (a request that never waits makes none). BodyLimitMiddleware: the declared length."""

from __future__ import annotations

import asyncio
from typing import Any

from service.http.middleware import CLIENT_CLOSED, BodyLimitMiddleware, RequestContextMiddleware
from service.metrics import Metrics

SCOPE = {"type": "http", "method": "POST", "path": "/x", "headers": []}


class _Client:
    """An ASGI server's side of one request: the body, then http.disconnect once `leave` is set."""

    def __init__(self) -> None:
        self.leave = asyncio.Event()
        self.sent: list[str] = []
        self.receiving = 0  # receive() calls in progress; a server serves one at a time
        self.most_receiving = 0
        self._body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        self.receiving += 1
        self.most_receiving = max(self.most_receiving, self.receiving)
        try:
            await self.leave.wait()
        finally:
            self.receiving -= 1
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message["type"])
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.leave.set()  # a complete response: the server's next message is http.disconnect


async def _answer(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _statuses(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["status"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "vae_http_requests_total"
    }


def test_a_request_that_never_waits_leaves_no_task_behind() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await _answer(send)

    async def main() -> tuple[set[asyncio.Task[Any]], list[str]]:
        client = _Client()
        await RequestContextMiddleware(app, Metrics())(dict(SCOPE), client.receive, client.send)
        await asyncio.sleep(0)  # a round of the loop, where a pending start would run
        await asyncio.sleep(0)
        return asyncio.all_tasks() - {asyncio.current_task()}, client.sent

    left, sent = asyncio.run(main())
    assert left == set()
    assert sent == ["http.response.start", "http.response.body"]


def test_a_client_that_leaves_while_the_request_waits_cancels_it() -> None:
    metrics = Metrics()
    cancelled = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(30)  # queued work that would never be wanted
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await _answer(send)

    async def main() -> tuple[list[str], set[asyncio.Task[Any]]]:
        client = _Client()
        call = asyncio.create_task(
            RequestContextMiddleware(app, metrics)(dict(SCOPE), client.receive, client.send)
        )
        for _ in range(5):
            await asyncio.sleep(0)
        client.leave.set()
        await asyncio.wait_for(call, 5)
        await asyncio.sleep(0)
        return client.sent, asyncio.all_tasks() - {asyncio.current_task()}

    sent, left = asyncio.run(main())
    assert cancelled == [True] and sent == [] and left == set()
    assert _statuses(metrics) == {str(CLIENT_CLOSED): 1.0}


def test_an_app_that_listens_for_the_disconnect_shares_the_one_listener() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(0)  # the loop starts the middleware's listener
        await receive()  # as Starlette's StreamingResponse listens for a disconnect

    async def app_at_once(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await receive()  # before the loop's next round: the listener starts here

    async def main(asgi: Any) -> tuple[int, set[asyncio.Task[Any]]]:
        client = _Client()
        call = asyncio.create_task(
            RequestContextMiddleware(asgi, Metrics())(dict(SCOPE), client.receive, client.send)
        )
        for _ in range(5):
            await asyncio.sleep(0)
        client.leave.set()
        await asyncio.wait_for(call, 5)
        await asyncio.sleep(0)
        return client.most_receiving, asyncio.all_tasks() - {asyncio.current_task()}

    for asgi in (app, app_at_once):
        most_receiving, left = asyncio.run(main(asgi))
        assert most_receiving == 1 and left == set()


def _call(middleware: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware({**SCOPE, "headers": headers}, receive, send))
    return sent


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_sane_request_id_is_kept_and_anything_else_replaced() -> None:
    def ids(given: bytes | None) -> list[bytes]:
        headers = [(b"x-request-id", given)] if given is not None else []
        start = _call(RequestContextMiddleware(_ok, Metrics()), [(b"host", b"t"), *headers])[0]
        assert (b"content-type", b"text/plain") in start["headers"]
        return [v for k, v in start["headers"] if k == b"x-request-id"]

    assert ids(b"client-id.1:2") == [b"client-id.1:2"]
    for bad in (None, b"", b"a b", b"id\n", b"\xb2", b"x" * 129):
        (made,) = ids(bad)
        assert made != bad and len(made) == 32 and int(made, 16) >= 0


def test_the_declared_length_is_checked_as_digits_only() -> None:
    def status(declared: bytes) -> int:
        sent = _call(BodyLimitMiddleware(_ok, max_bytes=10), [(b"content-length", declared)])
        return int(sent[0]["status"])

    assert status(b"2") == 200 and status(b"10") == 200
    # Over the cap, not a number, or a latin-1 superscript two (a digit to str.isdigit, not to int()): 413.
    for declared in (b"11", b"-1", b"1e3", b" 2", b"\xb2"):
        assert status(declared) == 413, declared
