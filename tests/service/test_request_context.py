"""RequestContextMiddleware on its own: the disconnect listener is up while a request waits, is shared with an
app that listens itself, and is never left behind (a request that never waits makes none)."""

from __future__ import annotations

import asyncio
from typing import Any

from service.metrics import Metrics
from service.middleware import CLIENT_CLOSED, RequestContextMiddleware

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
