"""Dynamic batching for one graph: the pattern of Triton's dynamic batcher and Ray Serve's `@serve.batch`.

Concurrent requests queue their items; one worker task takes up to `max_batch_size` items at a time (waiting
at most `max_delay_s` after the oldest arrived for a batch to fill), concatenates them, makes one call in a
worker thread, and hands each request exactly its own rows back. While a batch runs, new requests queue, so
batches grow with load on their own.

Guarantees, each tested in tests/service/test_batcher.py:
- a request's rows come back in order and never mix with another request's (each job owns a row range);
- a request larger than `max_batch_size` is split into chunks that run in order and are joined again;
- the queue is bounded in items: a request that does not fit fails at once with `Overloaded` (503);
- a request waits at most `timeout_s` (queue and run) and then gets `Timeout` (504); a job whose caller has
  gone (its request's deadline, a client disconnect) leaves the queue's count at once and is dropped, never
  run (`on_drop` counts it); a lone call on the event loop, which nothing can interrupt, arms no timer;
- a call stays in flight until onnxruntime returns, also when its caller has gone: a graph never runs two
  calls at once, so a timed-out request leaves at most its own call running behind it;
- a failing batch of several requests is retried one request at a time, so a bad input fails only its own
  request, and an error never stops the worker.

A request that finds the graph idle (nothing queued, nothing running, `max_delay_s` 0) runs in its own task
at once, without the queue and the worker task, so a lone client pays nothing for batching.

Calls run in a worker thread (onnxruntime releases the GIL), except calls expected to finish faster than a
thread hop costs (`inline_below_s`, from a moving average of measured run time per item): those run on the
event loop directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from service.errors import InferenceFailed, NotReady, Overloaded, ServiceError, Timeout

log = logging.getLogger(__name__)

# Longest call run on the event loop for a request alone in the process (see service.open_clients).
ALONE_INLINE_S = 0.002

Outputs = tuple[np.ndarray, ...]
RunFn = Callable[[np.ndarray], Outputs]

# Called in the submitting request's context, once per batch its items ran in, with (name, enqueued, started,
# finished, batch items, its own items); monotonic seconds. service.tracing's records spans.
JobObserver = Callable[[str, float, float, float, int, int], None]


def _never() -> bool:
    return False


@dataclass(eq=False)
class _Job:
    x: np.ndarray  # (n, ...) with n <= max_batch_size
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.monotonic)
    started: float = 0.0  # the batch's onnxruntime call: start and end, for tracing
    finished: float = 0.0
    batch_items: int = 0
    queued: bool = False  # in the queue and counted in its items


@dataclass
class BatchStats:
    """Hooks for metrics; the batcher itself stays free of any metrics library."""

    on_queue: Callable[[int], None] = lambda items: None
    on_batch: Callable[[int, float], None] = lambda items, seconds: None
    on_reject: Callable[[], None] = lambda: None
    on_drop: Callable[[int], None] = lambda items: None  # queued items whose request ended before they ran


class Batcher:
    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        executor: Executor,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        timeout_s: float,
        retry_after_s: int = 1,
        inline_below_s: float = 0.0,
        stats: BatchStats | None = None,
        alone: Callable[[], bool] | None = None,
        job_observer: JobObserver | None = None,
    ):
        self.name = name
        self._alone = alone or _never  # whether the process serves a single client now (service.open_clients)
        self._job_observer = job_observer
        self._run_fn = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._stats = stats or BatchStats()
        self._queue: deque[_Job] = deque()
        self._queued_items = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running = False  # a call is in flight (the worker's batch, or a lone request's own run)
        self._call: Future[tuple[Outputs, float]] | None = None  # the latest call handed to a thread
        self._closed = False
        # Runs expected to take less than inline_below_s happen on the event loop itself; the expectation is a
        # moving average of measured time per item, unknown (infinite) until the first run.
        self.inline_below_s = inline_below_s
        self._seconds_per_item = float("inf")

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(self, x: np.ndarray) -> Outputs:
        """Run `x` (n, ...) as part of some batch; returns this request's n rows of every output."""
        n = len(x)
        if n == 0:
            raise ValueError("empty request")
        if self._closed:
            raise NotReady(f"{self.name} is shutting down")
        if self._queued_items + n > self.max_queue:
            self._stats.on_reject()
            raise Overloaded(
                f"{self.name} is overloaded ({self._queued_items} items queued); retry later",
                retry_after_s=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        assert self._wake is not None
        jobs = [
            _Job(x[start : start + self.max_batch_size], loop.create_future())
            for start in range(0, n, self.max_batch_size)
        ]
        # A lone request on an idle graph runs in its own task: no queue, no wake-up of the worker task and
        # back, so batching costs a lone client nothing. Anything arriving meanwhile queues as usual.
        direct = self.max_delay_s == 0 and len(jobs) == 1 and not self._running and not self._queue
        limit = self._inline_limit(self._alone()) if direct else self.inline_below_s
        if not direct:
            for job in jobs:
                job.queued = True
            self._queue.extend(jobs)
            self._queued_items += n
            self._stats.on_queue(self._queued_items)
            self._wake.set()
        # A lone call on the event loop cannot be interrupted before it returns, so it arms no timer.
        timer = nullcontext() if direct and self._runs_here(n, limit) else asyncio.timeout(self.timeout_s)
        try:
            async with timer:
                if direct:
                    await self._run_alone(jobs[0], limit)
                parts = [await job.future for job in jobs]
        except TimeoutError:
            raise Timeout(f"{self.name} did not answer within {self.timeout_s:g} s") from None
        finally:
            for job in jobs:
                if not job.future.done():
                    job.future.cancel()  # tells the worker to skip what has not run yet
                elif not job.future.cancelled():
                    job.future.exception()  # mark a sibling chunk's failure as seen
                self._drop(job)  # a job still queued (its future cancelled here or by the timeout)
        if self._job_observer is not None:
            for job in jobs:
                self._job_observer(
                    self.name, job.enqueued, job.started, job.finished, job.batch_items, len(job.x)
                )
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(rows) for rows in zip(*parts, strict=True))

    def _inline_limit(self, alone: bool) -> float:
        # The only open connection in the process: nothing could join a batch, so skip the thread hop for
        # calls up to ALONE_INLINE_S; otherwise the usual rule, so arrivals during the call can queue.
        return max(ALONE_INLINE_S, self.inline_below_s) if alone else self.inline_below_s

    def _runs_here(self, items: int, limit: float) -> bool:
        """Whether a call of `items` runs on the event loop: expected to cost less than a thread hop."""
        return self._seconds_per_item * items < limit

    async def _run_alone(self, job: _Job, limit: float) -> None:
        self._running = True
        try:
            await self._run([job], limit)
        finally:
            call = self._call
            if call is not None and not call.done():
                # The caller left (its deadline, a disconnect) while its call runs on in a thread: the graph
                # stays busy until onnxruntime returns, so the next call does not run beside it.
                loop = asyncio.get_running_loop()

                def over(_: object) -> None:  # in the thread that ran the call
                    try:
                        loop.call_soon_threadsafe(self._call_over)
                    except RuntimeError:  # the loop has closed: nothing waits on it, only the flag is left
                        self._running = False

                call.add_done_callback(over)
            else:
                self._call_over()

    def _call_over(self) -> None:
        self._running = False
        if self._queue and self._wake is not None:
            self._wake.set()  # what queued meanwhile is the worker's next batch

    def _drop(self, job: _Job) -> None:
        """Take a job whose caller has gone out of the queue's count (it stays in the deque until the worker
        reaches it, and is skipped there)."""
        if job.queued:
            job.queued = False
            n = len(job.x)
            self._queued_items -= n
            self._stats.on_drop(n)
            self._stats.on_queue(self._queued_items)

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work(), name=f"batcher:{self.name}")

    async def close(self) -> None:
        """Refuse new work, fail what is still queued, let the batch in flight finish, stop the worker."""
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            job.queued = False
            if not job.future.done():
                job.future.set_exception(NotReady(f"{self.name} is shutting down"))
        self._queued_items = 0
        if self._wake is not None:
            self._wake.set()
        if self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout=self.timeout_s)
            except (TimeoutError, RuntimeError):  # RuntimeError: the worker's loop is gone
                self._worker.cancel()

    async def _work(self) -> None:
        assert self._wake is not None
        while not self._closed:
            if not self._queue or self._running:  # one call in flight per graph: a lone run may be going
                self._wake.clear()
                await self._wake.wait()
                continue
            # The oldest job fixes the deadline; a job that waited while the previous batch ran goes at once.
            deadline = self._queue[0].enqueued + self.max_delay_s
            while self._queued_items < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                self._running = True
                try:
                    await self._run(batch)
                except Exception:  # never let the worker die: fail the batch and go on
                    log.exception("batcher %s: unexpected error", self.name)
                    _fail(batch, InferenceFailed)
                finally:
                    self._running = False

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        items = 0
        while self._queue:
            job = self._queue[0]
            n = len(job.x)
            if job.future.done():  # caller gone: dropped, never run
                self._queue.popleft()
                self._drop(job)  # counted already when its caller left
                continue
            if items + n > self.max_batch_size:
                break
            self._queue.popleft()
            job.queued = False
            self._queued_items -= n
            batch.append(job)
            items += n
        self._stats.on_queue(self._queued_items)
        return batch

    async def _run(self, batch: list[_Job], limit: float | None = None) -> None:
        x = batch[0].x if len(batch) == 1 else np.concatenate([job.x for job in batch])
        try:
            if self._runs_here(len(x), self.inline_below_s if limit is None else limit):
                # Cheaper than the thread hop around it (a tiny MLP decodes one latent in ~20 us): run here.
                outputs, elapsed = _timed(self._run_fn, x)
            else:
                call = self._call = self._executor.submit(_timed, self._run_fn, x)
                try:
                    outputs, elapsed = await asyncio.wrap_future(call)
                finally:
                    # A finished call is let go, outputs and all; one still running after its caller left
                    # stays, for _run_alone to wait on.
                    if call.done():
                        self._call = None
        except Exception as exc:
            if len(batch) > 1:
                # Isolate the culprit: rerun each request alone, so only those that fail by themselves fail.
                log.warning("batcher %s: batch of %d requests failed; retrying each", self.name, len(batch))
                for job in batch:
                    if not job.future.done():
                        await self._run([job])
                return
            known = exc if isinstance(exc, ServiceError) else None
            if known is None:
                log.error("batcher %s: inference failed: %s: %s", self.name, type(exc).__name__, exc)
            _fail(batch, lambda: known or InferenceFailed())
            return
        measured = elapsed / len(x)
        first = self._seconds_per_item == float("inf")
        self._seconds_per_item = measured if first else 0.8 * self._seconds_per_item + 0.2 * measured
        self._stats.on_batch(len(x), elapsed)
        finished = time.monotonic()
        offset = 0
        for job in batch:
            n = len(job.x)
            job.started, job.finished, job.batch_items = finished - elapsed, finished, len(x)
            if not job.future.done():
                job.future.set_result(tuple(out[offset : offset + n] for out in outputs))
            offset += n


def _timed(fn: RunFn, x: np.ndarray) -> tuple[Outputs, float]:
    """fn(x) and its own duration, without the thread hop around it."""
    started = time.perf_counter()
    outputs = fn(x)
    return outputs, time.perf_counter() - started


def _fail(batch: list[_Job], make_error: Callable[[], BaseException]) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(make_error())
