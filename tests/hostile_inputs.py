"""Files and bodies a hostile client would send, built with Pillow and plain bytes (nothing committed).

Shared by the hardening tests and `bench/hostile.py`, which measures what each costs a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import zlib
from typing import Any

from PIL import Image


def progressive_jpeg(width: int, height: int, extra_scans: int) -> bytes:
    """A flat grey progressive JPEG whose last scan is repeated `extra_scans` times: libjpeg decodes every
    pixel once per scan, so the cost grows with the repeats while the file barely does (each flat scan is a
    few dozen bytes)."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "JPEG", progressive=True, quality=50)
    data = buf.getvalue()
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # SOS .. entropy data, without EOI
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def png_with_chunks(size: tuple[int, int], chunks: list[bytes]) -> bytes:
    """A small grey PNG with `chunks` (made by `png_chunk`) inserted before its image data."""
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, "PNG")
    png = buf.getvalue()
    idat = png.index(b"IDAT") - 4
    return png[:idat] + b"".join(chunks) + png[idat:]


def ztxt_chunks(count: int, inflated_bytes: int = 1 << 20) -> list[bytes]:
    """zTXt chunks that each inflate to `inflated_bytes` (Pillow inflates up to 1 MiB per chunk)."""
    body = zlib.compress(b"a" * inflated_bytes, 9)
    return [png_chunk(b"zTXt", b"k%d\x00\x00" % i + body) for i in range(count)]


def exif_chunk(size: int) -> bytes:
    """An eXIf chunk of about `size` bytes: one IFD of up to 65,535 entries, each pointing at its own block
    of undefined bytes, so that parsing it reads all of them."""
    entries = min(65_535, max(1, size // 256))
    block = max(4, (size - 14 - 12 * entries) // entries)
    data_at = 8 + 2 + 12 * entries + 4
    ifd = struct.pack("<H", entries) + b"".join(
        struct.pack("<HHII", 0xC000 + i % 4096, 7, block, data_at + i * block) for i in range(entries)
    )
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x01" * (block * entries)
    return png_chunk(b"eXIf", tiff)


def png_with_trailing_chunks(size: tuple[int, int], chunks: list[bytes]) -> bytes:
    """A small grey PNG with `chunks` after its image data (Pillow reads them when it finishes decoding)."""
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, "PNG")
    png = buf.getvalue()
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + b"".join(chunks) + png[iend:]


# --- a raw HTTP/2 gRPC client, to do what well-behaved clients never do (stall, never read) -----------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS, _PING, _WINDOW_UPDATE = 0, 1, 4, 6, 8


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as 'literal without indexing, new name' (RFC 7541, 6.2.2), lengths below 127."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_headers(method: str, stream: int, metadata: dict[str, str] | None = None) -> bytes:
    path = f"/inference.GRPCInferenceService/{method}".encode()
    fields = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
        (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        *((k.encode(), v.encode()) for k, v in (metadata or {}).items()),
    ]  # fmt: skip
    block = b"".join(_hpack_literal(k, v) for k, v in fields)
    return h2_frame(_HEADERS, 0x4, stream, block)  # END_HEADERS


def grpc_message_frames(stream: int, message: bytes, declared: int | None = None, end: bool = True) -> bytes:
    """DATA frames carrying one length-prefixed gRPC message (or its first bytes, declaring more)."""
    body = b"\x00" + struct.pack(">I", len(message) if declared is None else declared) + message
    frames = [body[i : i + 16384] for i in range(0, len(body), 16384)] or [b""]
    return b"".join(
        h2_frame(_DATA, 0x1 if end and i == len(frames) - 1 else 0, stream, part)
        for i, part in enumerate(frames)
    )


def h2_client_start(window: int | None = None) -> bytes:
    """Preface, our SETTINGS (SETTINGS_INITIAL_WINDOW_SIZE=`window` when given) and an ACK of the server's."""
    settings = b"" if window is None else struct.pack(">HI", 0x4, window)
    return H2_PREFACE + h2_frame(_SETTINGS, 0, 0, settings) + h2_frame(_SETTINGS, 0x1, 0)


class RawH2:
    """One HTTP/2 connection speaking gRPC frames by hand, on asyncio: it keeps to the server's flow-control
    windows when it sends, answers nothing unless told to (no PING replies, no WINDOW_UPDATEs: a reader that
    never reads), and records how each stream ended (`ended[stream]`: "end" or "reset") and any GOAWAY."""

    def __init__(self, reader: Any, writer: Any, answer_pings: bool):
        self.reader, self.writer, self.answer_pings = reader, writer, answer_pings
        self.initial = 65535
        self.conn_window = 65535
        self.windows: dict[int, int] = {}
        self.ended: dict[int, str] = {}
        self.received: dict[int, int] = {}
        self.goaway = False
        self.closed = False
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, *, window: int | None = None, answer_pings: bool = False) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(h2_client_start(window))
        return cls(reader, writer, answer_pings)

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await self.reader.readexactly(length)
                if kind == _SETTINGS and not flags & 1:
                    for i in range(0, len(payload), 6):
                        ident, value = struct.unpack_from(">HI", payload, i)
                        if ident == 0x4:
                            for s in self.windows:
                                self.windows[s] += value - self.initial
                            self.initial = value
                elif kind == _WINDOW_UPDATE:
                    increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    if stream == 0:
                        self.conn_window += increment
                    elif stream in self.windows:
                        self.windows[stream] += increment
                elif kind == _PING and not flags & 1 and self.answer_pings:
                    self.writer.write(h2_frame(_PING, 1, 0, payload))
                elif kind in (_DATA, _HEADERS):
                    self.received[stream] = self.received.get(stream, 0) + length
                    if flags & 0x1:
                        self.ended.setdefault(stream, "end")
                elif kind == 3:  # RST_STREAM
                    self.ended.setdefault(stream, "reset")
                elif kind == 7:  # GOAWAY
                    self.goaway = True
                self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.closed = True
            self._changed.set()

    def start_call(
        self, stream: int, method: str = "ModelInfer", metadata: dict[str, str] | None = None
    ) -> None:
        self.windows[stream] = self.initial
        self.writer.write(grpc_headers(method, stream, metadata))

    async def send(self, stream: int, data: bytes, end: bool, timeout_s: float = 5.0) -> int:
        """Send `data` on `stream` as the windows allow; the bytes sent before `timeout_s` passed."""
        sent, loop = 0, asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while sent < len(data):
            room = min(16384, self.conn_window, self.windows.get(stream, 0), len(data) - sent)
            if self.closed or stream in self.ended:
                break
            if room <= 0:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                continue
            last = end and sent + room == len(data)
            self.writer.write(h2_frame(_DATA, 0x1 if last else 0, stream, data[sent : sent + room]))
            self.conn_window -= room
            self.windows[stream] -= room
            sent += room
            await self.writer.drain()
        return sent

    async def wait_ended(self, stream: int, timeout_s: float) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while stream not in self.ended and not self.closed and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
        return self.ended.get(stream) or ("closed" if self.closed else None)

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


def grpc_message(message: bytes, declared: int | None = None) -> bytes:
    """One length-prefixed gRPC message (or its head, when `declared` says more is coming)."""
    return b"\x00" + struct.pack(">I", len(message) if declared is None else declared) + message
