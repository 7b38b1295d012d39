"""Uploaded image bytes -> model tensors, on a bounded pool of threads with a bounded backlog.

Decoding is the costliest thing a client can ask of the CPU, so it is bounded three ways: every image's
header is checked against the limits before any image is decoded (`limits.check_image_headers`); at most
`workers` images decode at once, and at most `max_pending` wait or decode, beyond which a request gets 503 +
Retry-After at once; and a request that is cancelled (its client left, its timeout passed) takes its images
that have not started out of the queue, so no CPU is spent on an answer no one will read.

Requests share the threads in turn: each keeps at most `workers` chunks of its images handed to the pool and
hands over the next as one finishes, so a one-image request waits behind a chunk of each request decoding,
not behind every image of the large requests that came first.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import InvalidInput, Overloaded
from service.inference.limits import check_image_count, check_image_headers
from vae_contract.imaging import ImageDecodeError, ImageHeader, decode_image, prepare_image, read_header
from vae_contract.manifest import ImageSpec

_CHUNK = 16  # most images per decoding job


class ImagePool:
    def __init__(
        self, workers: int, max_pending: int, retry_after_s: int = 1, *, executor: Executor | None = None
    ):
        """`executor`: where decoding runs (default: a new pool of `workers` threads, owned by this pool)."""
        self.workers = workers
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self._executor = executor or ThreadPoolExecutor(workers, thread_name_prefix="image-decode")
        self._lock = threading.Lock()
        self._pending = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePool:
        return cls(settings.image_decode_workers, settings.image_decode_queue, settings.retry_after_s)

    @property
    def pending(self) -> int:
        """Images queued or decoding now."""
        return self._pending

    async def prepare(
        self, blobs: Sequence[bytes], spec: ImageSpec, settings: Settings, *, exactly: int | None = None
    ) -> np.ndarray:
        """Image files -> float32 (N, C, H, W) in the model's pixel range, or the first problem found."""
        check_image_count(len(blobs), settings, exactly)
        n = len(blobs)
        self._admit(n + 1)  # the header pass and every image, reserved up front
        unsubmitted = n
        stop = threading.Event()  # set when the request ends early: running jobs stop between images
        try:
            (headers,) = await self._await([self._submit(1, _read_headers, blobs)])
            check_image_headers(headers, spec, settings)
            out = np.empty((n, *spec.shape), dtype=np.float32)
            # Chunks: one job per image would cost more in hand-offs than a small image costs to decode.
            size = max(1, min(_CHUNK, -(-n // self.workers)))
            jobs: list[Future[object]] = []  # handed to the pool, not yet seen finished
            for start in range(0, n, size):
                if len(jobs) >= self.workers:
                    jobs = await self._await(jobs, first=True)
                part = blobs[start : start + size]
                jobs.append(self._submit(len(part), _prepare_into, out, start, part, spec, settings, stop))
                unsubmitted -= len(part)
            await self._await(jobs)
            return out
        finally:
            stop.set()
            self._release(unsubmitted)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _admit(self, n: int) -> None:
        with self._lock:
            if self._pending + n > self.max_pending:
                raise Overloaded(
                    f"image decoding is at capacity ({self._pending} images queued); retry later",
                    retry_after_s=self.retry_after_s,
                )
            self._pending += n
        # A submitted job gives its slot back when it finishes or is cancelled; prepare() gives back the rest.

    def _submit(self, slots: int, fn: object, *args: object) -> Future[object]:
        future: Future[object] = self._executor.submit(fn, *args)  # type: ignore[arg-type]
        future.add_done_callback(lambda _: self._release(slots))
        return future

    def _release(self, n: int) -> None:
        with self._lock:
            self._pending -= n

    async def _await(self, jobs: list[Future[object]], first: bool = False) -> list[Any]:
        """Every job's result, or with `first` the jobs still unfinished once one has finished; on the first
        failure or on cancellation, the jobs not started are dropped.

        The error reported is that of the lowest-numbered image among those that failed by then."""
        waiting = [asyncio.wrap_future(job) for job in jobs]
        ok = False
        try:
            until = asyncio.FIRST_COMPLETED if first else asyncio.FIRST_EXCEPTION
            done, _ = await asyncio.wait(waiting, return_when=until)
            failed = [w for w in waiting if w in done and not w.cancelled() and w.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            ok = True
            if first:
                for w in waiting:
                    if w not in done:  # the caller waits on the job again: only mark this view's outcome seen
                        w.add_done_callback(_seen)
                return [job for job, w in zip(jobs, waiting, strict=True) if w not in done]
            return [w.result() for w in waiting]
        finally:
            for job, w in zip(jobs, waiting, strict=True):
                if w.done() and not w.cancelled():
                    w.exception()  # mark as retrieved: no "exception never retrieved" noise
                elif not ok:
                    job.cancel()  # no-op for jobs that are running
                    w.cancel()


def _seen(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _read_headers(blobs: Sequence[bytes]) -> list[ImageHeader]:
    headers = []
    for i, data in enumerate(blobs):
        try:
            headers.append(read_header(data))
        except ImageDecodeError as exc:
            raise InvalidInput(f"images[{i}]: {exc}") from None
    return headers


def _prepare_into(
    out: np.ndarray, start: int, blobs: Sequence[bytes], spec: ImageSpec, settings: Settings,
    stop: threading.Event,
) -> None:  # fmt: skip
    for i, data in enumerate(blobs, start):
        if stop.is_set():  # the request is over (cancelled, timed out, or another image failed)
            return
        try:
            out[i] = prepare_image(decode_image(data, settings.max_image_pixels), spec)
        except ImageDecodeError as exc:
            raise InvalidInput(f"images[{i}]: {exc}") from None
