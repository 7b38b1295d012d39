"""Logging: plain or one JSON object per line, every record tagged with the current request id."""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

request_id: ContextVar[str] = ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, shown escaped: a client can
# put any of them in a logged value (a percent-encoded path decodes to them), and a raw CR or LF would let it
# end our line and write one of its own.
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_controls(text: str) -> str:
    """`text` on one line: control characters and line separators written as `\\xNN` / `\\uNNNN`."""
    return text.translate(_UNSAFE) if not text.isprintable() else text


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class PlainFormatter(logging.Formatter):
    """Plain lines, one per record whatever the message holds; only a traceback spans several lines.

    The time's date and clock part is formatted once a second, not per line (every request logs one)."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        second, stamp = self._second
        if int(record.created) != second:  # localtime() truncates to the second as int() does
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (int(record.created), stamp)  # one assignment: threads see a matching pair
        return self.default_msec_format % (stamp, record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message.rstrip("\r\n"))  # a final newline is not content
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; orjson escapes every control character in strings, so values are safe."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "info", json_lines: bool = False) -> None:
    """Route our loggers and uvicorn's through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # service.http.middleware logs each request once, with its id and duration: uvicorn's would repeat it.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
