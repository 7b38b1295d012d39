"""Files and bodies a hostile client would send, built with Pillow and plain bytes (nothing committed).

Shared by the hardening tests and `bench/hostile.py`, which measures what each costs a real server.
"""

from __future__ import annotations

import io
import struct
import zlib

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
