"""Progress of long work (evaluation, IWAE bounds): a tqdm bar on a terminal, a log line every
`every_s` seconds otherwise (files, CI, pipes), so that no command runs minutes in silence."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

log = logging.getLogger("training")


class Progress:
    """Counts `total` items; `update(n)` after each chunk. A context manager; closing it clears the bar."""

    def __init__(
        self, total: int, what: str, unit: str = "images", every_s: float = 30.0, enabled: bool = True
    ) -> None:
        self.total, self.what, self.unit, self.every_s = total, what, unit, every_s
        self.done = 0
        self.began = self.last_line = time.monotonic()
        self.terminal = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.terminal
        self.bar = tqdm(total=total, desc=what, unit=unit[:3], leave=False, disable=not self.terminal)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if self.lines and now - self.last_line >= self.every_s:
            self.last_line = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.began
        share = self.done / max(1, self.total)
        left = f", about {elapsed * (1 - share) / share:.0f} s left" if share > 0 else ""
        return f"{self.what}: {self.done}/{self.total} {self.unit} ({share:.0%}) in {elapsed:.0f} s{left}"

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.bar.close()
