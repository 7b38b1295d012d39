"""The dynamic batcher on its own: ordering, isolation, chunking, partial failures, queue limit, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving import until

from service.errors import InferenceFailed, NotReady, Overloaded, Timeout
from service.inference.batcher import Batcher, BatchStats


class Recorder:
    """A run function (doubles its input, and adds a row-sum column) that records every batch it saw.

    With `hold`, every call signals `started` and then waits for the test to set `release`: a batch that runs
    for exactly as long as the test needs it to.
    """

    def __init__(self, delay: float = 0.0, poison: float | None = None, hold: bool = False):
        self.batches: list[int] = []
        self.delay = delay
        self.poison = poison
        self.lock = threading.Lock()
        self.started, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        with self.lock:
            self.batches.append(len(x))
        self.started.set()
        self.release.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.poison is not None and (x == self.poison).any():
            raise RuntimeError("poisoned batch")
        return x * 2, x.sum(axis=1, keepdims=True)


def make(run: Recorder, **kwargs: object) -> Batcher:
    options: dict = dict(max_batch_size=8, max_delay_s=0.01, max_queue=1000, timeout_s=5.0)
    options.update(kwargs)
    return Batcher(run, name="test", executor=ThreadPoolExecutor(2), **options)


def rows(start: int, n: int, dim: int = 3) -> np.ndarray:
    return np.arange(start * dim, (start + n) * dim, dtype=np.float32).reshape(n, dim)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows():
    run = Recorder()
    batcher = make(run, max_batch_size=16, max_delay_s=0.05)
    sizes = [1, 3, 2, 5, 1, 4, 2, 1, 3, 2]
    inputs = [rows(10 * i, n) for i, n in enumerate(sizes)]

    async def main():
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    results = asyncio.run(main())
    for x, (doubled, sums) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(axis=1, keepdims=True))
    assert sum(run.batches) == sum(sizes)
    assert len(run.batches) < len(sizes)  # requests were actually combined
    assert max(run.batches) <= 16


def test_a_request_larger_than_the_batch_is_split_and_joined_in_order():
    run = Recorder()
    batcher = make(run, max_batch_size=4)
    x = rows(0, 11)
    doubled, _ = asyncio.run(batcher.submit(x))
    np.testing.assert_array_equal(doubled, x * 2)
    assert run.batches == [4, 4, 3]


def test_a_failing_batch_fails_only_the_request_that_causes_it():
    run = Recorder(poison=-1.0)
    batcher = make(run, max_batch_size=64, max_delay_s=0.05)
    inputs = [rows(i, 2) for i in range(6)]
    inputs[2] = np.full((2, 3), -1.0, dtype=np.float32)

    async def main():
        return await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], InferenceFailed)
    assert "poisoned" not in results[2].message  # internal errors never reach clients
    for i, result in enumerate(results):
        if i != 2:
            assert not isinstance(result, BaseException), result
            np.testing.assert_array_equal(result[0], inputs[i] * 2)
    assert run.batches[0] == 12  # all six ran together first, then one by one


def test_the_worker_survives_failures():
    run = Recorder(poison=-1.0)
    batcher = make(run)

    async def main():
        with pytest.raises(InferenceFailed):
            await batcher.submit(np.full((1, 3), -1.0, dtype=np.float32))
        return await batcher.submit(rows(0, 2))

    np.testing.assert_array_equal(asyncio.run(main())[0], rows(0, 2) * 2)


def test_a_full_queue_refuses_at_once_with_retry_after():
    run = Recorder(hold=True)
    rejected = []
    batcher = make(
        run,
        max_batch_size=2,
        max_queue=4,
        retry_after_s=3,
        stats=BatchStats(on_reject=lambda: rejected.append(1)),
    )

    async def main():
        first = asyncio.create_task(batcher.submit(rows(0, 2)))
        await until(run.started.is_set)  # taken by the worker, running
        queued = asyncio.create_task(batcher.submit(rows(2, 4)))
        await until(lambda: batcher.queued_items == 4)  # fills the queue
        with pytest.raises(Overloaded) as info:
            await batcher.submit(rows(6, 1))
        assert not first.done()  # refused while the batch still runs, not after waiting for it
        assert info.value.headers["Retry-After"] == "3"
        assert info.value.status == 503
        run.release.set()
        return await first, await queued

    (a, _), (b, _) = asyncio.run(main())
    np.testing.assert_array_equal(a, rows(0, 2) * 2)  # admitted requests still complete
    np.testing.assert_array_equal(b, rows(2, 4) * 2)
    assert rejected == [1]


def test_a_request_times_out_and_its_queued_work_is_dropped():
    run = Recorder(hold=True)
    dropped: list[int] = []
    batcher = make(run, max_batch_size=1, timeout_s=0.1, stats=BatchStats(on_drop=dropped.append))

    async def main():
        slow = asyncio.create_task(batcher.submit(rows(0, 1)))
        await until(run.started.is_set)
        with pytest.raises(Timeout):
            await batcher.submit(rows(1, 1))  # waits behind `slow`, gives up
        # Out of the queue's count at once, while the worker still waits for `slow`'s run.
        assert batcher.queued_items == 0 and dropped == [1]
        with pytest.raises(Timeout):
            await slow  # its own run takes longer than the timeout
        run.release.set()  # the abandoned run ends; the next request queues behind it
        batcher.timeout_s = 5
        return await batcher.submit(rows(2, 1))

    result, _ = asyncio.run(main())
    np.testing.assert_array_equal(result, rows(2, 1) * 2)
    # The timed-out second request never ran: only the first and the last did.
    assert run.batches == [1, 1]


def test_a_lone_call_whose_caller_left_keeps_the_graph_busy_until_it_returns():
    run = Recorder(hold=True)
    batcher = make(run, max_delay_s=0, timeout_s=0.1)

    async def main():
        with pytest.raises(Timeout):
            await batcher.submit(rows(0, 1))  # alone: runs in its own task, and hangs past its timeout
        batcher.timeout_s = 5
        later = asyncio.create_task(batcher.submit(rows(1, 2)))
        await asyncio.sleep(0.1)
        assert run.batches == [1] and not later.done()  # queued: no second call beside the hung one
        run.release.set()
        return await later

    result, _ = asyncio.run(main())
    np.testing.assert_array_equal(result, rows(1, 2) * 2)
    assert run.batches == [1, 2]


def test_close_fails_waiting_requests_and_refuses_new_ones():
    run = Recorder(hold=True)
    batcher = make(run, max_batch_size=1)

    async def main():
        running = asyncio.create_task(batcher.submit(rows(0, 1)))
        waiting = asyncio.create_task(batcher.submit(rows(1, 1)))
        await until(lambda: run.started.is_set() and batcher.queued_items == 1)
        closing = asyncio.create_task(batcher.close())
        await until(waiting.done)  # failed at once, while the batch in flight still runs
        with pytest.raises(NotReady):
            await batcher.submit(rows(2, 1))
        assert not running.done() and not closing.done()  # close waits for the batch in flight
        run.release.set()
        await closing
        return await asyncio.gather(running, waiting, return_exceptions=True)

    results = asyncio.run(main())
    np.testing.assert_array_equal(results[0][0], rows(0, 1) * 2)  # the batch in flight finished
    assert isinstance(results[1], NotReady)


def test_empty_requests_are_a_programming_error():
    with pytest.raises(ValueError):
        asyncio.run(make(Recorder()).submit(np.zeros((0, 3), dtype=np.float32)))


class RunClock:
    """The batcher's clock for timing runs, advanced only by the runs themselves: a run "takes" exactly what
    it says, however busy the host is, so the inline rule's decisions are deterministic."""

    monotonic = staticmethod(time.monotonic)  # deadlines keep real time

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def run_clock(monkeypatch: pytest.MonkeyPatch) -> RunClock:
    from service.inference import batcher as batcher_module

    clock = RunClock()
    monkeypatch.setattr(batcher_module, "time", clock)
    return clock


def test_fast_runs_go_inline_and_slow_ones_to_the_thread(run_clock):
    threads: list[str] = []

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        threads.append(threading.current_thread().name)
        run_clock.now += float(x[0, 0])
        return (x,)

    batcher = make(run, inline_below_s=0.005)

    async def main():
        for delay in (0.0, 0.0, 0.0, 0.05, 0.0):
            await batcher.submit(np.full((1, 3), delay, dtype=np.float32))

    asyncio.run(main())
    main_thread = threading.main_thread().name
    # The first run measures (thread); fast ones then run inline until a slow one moves the average up.
    assert threads[0] != main_thread
    assert threads[1] == threads[2] == threads[3] == main_thread
    assert threads[4] != main_thread


def test_a_lone_request_runs_in_its_own_task_and_what_arrives_meanwhile_forms_the_next_batch():
    """max_delay 0: an idle graph runs a request at once, without the worker task; the requests arriving
    while it runs queue and go together in one call after it, never beside it (one call in flight)."""
    started, release = threading.Event(), threading.Event()
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        if x[0, 0] == 0:  # the first request holds the graph until the others have queued
            started.set()
            release.wait(5)
        with lock:
            in_flight[0] -= 1
        return (x * 2,)

    recorded = Recorder()
    batcher = make(lambda x: (recorded(x), run(x))[1], max_delay_s=0.0)

    async def main():
        async def submit(x: np.ndarray) -> np.ndarray:
            (out,) = await batcher.submit(x)
            return out

        first = asyncio.create_task(submit(rows(0, 1)))
        await asyncio.to_thread(started.wait, 5)
        others = [asyncio.create_task(submit(rows(i, 1))) for i in (1, 2, 3)]
        while batcher.queued_items < 3:
            await asyncio.sleep(0)
        release.set()
        return await first, await asyncio.gather(*others)

    lone, rest = asyncio.run(main())
    np.testing.assert_array_equal(lone, rows(0, 1) * 2)
    for i, out in zip((1, 2, 3), rest, strict=True):
        np.testing.assert_array_equal(out, rows(i, 1) * 2)
    assert recorded.batches == [1, 3]  # the lone run, then one batch of the three that queued
    assert most[0] == 1  # never two calls at once


def test_a_request_alone_in_the_process_runs_on_the_event_loop(run_clock):
    """With one open connection nothing can join a batch, so the call skips the thread hop; with two, the
    usual rule (here: the thread, since the measured run is slower than inline_below_s)."""
    from service.open_clients import OpenClients

    threads: list[str] = []

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        threads.append(threading.current_thread().name)
        run_clock.now += 0.001  # slower than inline_below_s below, far below the alone limit
        return (x,)

    clients = OpenClients()
    batcher = make(run, max_delay_s=0.0, inline_below_s=0.0001, alone=clients.alone)

    async def main(connections: list[object]) -> None:
        clients.watch_http(connections)
        for i in range(3):
            await batcher.submit(rows(i, 1))

    asyncio.run(main([object(), object()]))  # two connections: the first run measures, all on the thread
    asyncio.run(main([object()]))  # one connection: on the loop
    loop_thread = threading.main_thread().name
    assert all(name != loop_thread for name in threads[:3])
    assert threads[3:] == [loop_thread] * 3


def test_both_ports_count_towards_a_lone_client():
    """One HTTP connection or one gRPC call in flight is alone; one of each is not (they share the loop)."""
    from service.open_clients import OpenClients

    clients = OpenClients()
    assert not clients.alone()  # no HTTP guard has handed its set over: never alone
    connections: set[object] = set()
    clients.watch_http(connections)
    assert clients.alone()
    connections.add(object())
    assert clients.alone()
    with clients.grpc_call():
        assert not clients.alone()
    connections.clear()
    with clients.grpc_call():
        assert clients.alone()
        with clients.grpc_call():
            assert not clients.alone()
    assert clients.alone()
