"""What an image file costs to decode, read from its structure before any decoder sees it.

Pillow bounds pixels, not time: a progressive JPEG decodes every pixel once per scan, and a file may repeat
scans thousands of times (0.2 MB of repeated 4000x4000 scans held a decoder for 25 s); a PNG's text chunks
are inflated one by one (up to 1 MB each) and its eXIf chunk is parsed whole, both on the decoding thread
and whatever their number. So the file's own structure is walked first, by its lengths, and a file whose
structure alone makes it costly is refused with a message that says why:

- JPEG: at most `MAX_JPEG_SCANS` scans (libjpeg's progressive files have 6 to 10; mozjpeg's up to ~20), and
  at most `MAX_JPEG_SEGMENTS` marker segments before the first scan (Pillow walks them in Python).
- PNG: at most `MAX_PNG_CHUNKS` chunks in all (libpng writes 8 KiB IDAT chunks, so a 16 MB file has
  ~2,000), and its ancillary chunks (text, eXIf, iCCP, time, ...; everything but the pixels and the
  palette) at most `MAX_PNG_ANCILLARY` in number and `MAX_PNG_ANCILLARY_BYTES` in all, an eXIf chunk at most
  `MAX_EXIF_BYTES` (JPEG's own bound on an APP1 segment).

With these bounds and the pixel cap every decode the service accepts is short (well under a second at the
largest size, see docs/limits.md), so a request that ends early leaves nothing long-running behind.
Nothing here decodes: it reads lengths and marker bytes only.
"""

from __future__ import annotations

import struct

MAX_JPEG_SCANS = 64
MAX_JPEG_SEGMENTS = 1024
MAX_PNG_CHUNKS = 65_536
MAX_PNG_ANCILLARY = 64
MAX_PNG_ANCILLARY_BYTES = 1024 * 1024
MAX_EXIF_BYTES = 64 * 1024

_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length


class CostlyImage(ValueError):
    """A file whose structure makes it too costly to decode; the message is safe to show to a client."""


def check_structure(data: bytes, fmt: str) -> None:
    """Refuse a PNG or JPEG file whose structure alone makes decoding costly (see the module docstring)."""
    if fmt == "JPEG":
        _check_jpeg(data)
    elif fmt == "PNG":
        _check_png(data)


def _check_jpeg(data: bytes) -> None:
    # Marker segments up to the first scan, each by its length (APPn data may hold any bytes).
    pos, segments = 2, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return  # not a marker where one must be: the decoder reports the corrupt file
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker == _SOS:
            break
        if marker == _EOI:
            return
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise CostlyImage(
                f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments before its image data"
            )
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        pos += 2 + length
    else:
        return
    # After the first scan header, entropy-coded data escapes 0xFF as FF 00, so FF DA starts a scan (a table
    # segment between scans could hold those bytes too: counted as a scan, which errs on the safe side).
    scans = data.count(b"\xff\xda", pos)
    if scans > MAX_JPEG_SCANS:
        raise CostlyImage(
            f"JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are accepted (each scan decodes every pixel)"
        )


def _check_png(data: bytes) -> None:
    pos, chunks, ancillary, ancillary_bytes = 8, 0, 0, 0
    while pos + 8 <= len(data):
        length, tag = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise CostlyImage(f"PNG with more than {MAX_PNG_CHUNKS} chunks")
        if tag == b"IEND":
            return
        if tag[0] & 0x20:  # lower-case first letter: an ancillary chunk (PNG spec, section 5.4)
            name = tag.decode("latin-1")
            ancillary += 1
            ancillary_bytes += length
            if tag == b"eXIf" and length > MAX_EXIF_BYTES:
                raise CostlyImage(f"PNG eXIf chunk of {length} bytes; at most {MAX_EXIF_BYTES} are accepted")
            if ancillary > MAX_PNG_ANCILLARY:
                raise CostlyImage(f"PNG with more than {MAX_PNG_ANCILLARY} metadata chunks")
            if ancillary_bytes > MAX_PNG_ANCILLARY_BYTES:
                raise CostlyImage(
                    f"PNG metadata chunks ({name!r} and those before it) exceed "
                    f"{MAX_PNG_ANCILLARY_BYTES} bytes"
                )
        pos += 12 + length
