"""The structure walk refuses what is costly to decode and nothing a camera or an encoder writes."""

from __future__ import annotations

import io

import pytest
from hostile_inputs import exif_chunk, png_chunk, png_with_chunks, progressive_jpeg, ztxt_chunks
from PIL import Image

from vae_contract.image_structure import (
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_ANCILLARY,
    CostlyImage,
    check_structure,
)


def _jpeg(**save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 60)).save(buf, "JPEG", **save)
    return buf.getvalue()


def _camera_like() -> bytes:
    """A baseline JPEG with EXIF carrying a progressive JPEG thumbnail (its scans sit inside APP1)."""
    thumb = io.BytesIO()
    Image.new("RGB", (160, 120), (1, 2, 3)).save(thumb, "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 1
    app1 = exif.tobytes() + thumb.getvalue() * 4  # several thumbnails' worth of FF DA bytes inside APP1
    return _jpeg(exif=app1[:65000])


@pytest.mark.parametrize(
    "data",
    [
        _jpeg(),
        _jpeg(progressive=True),
        _jpeg(progressive=True, subsampling=0, quality=95),
        _camera_like(),
        progressive_jpeg(64, 64, MAX_JPEG_SCANS - 6),  # the base file has 6 scans
        png_with_chunks((28, 28), [*ztxt_chunks(4, 4096), exif_chunk(4096)]),
        png_with_chunks((28, 28), [png_chunk(b"tEXt", b"k\x00v") for _ in range(MAX_PNG_ANCILLARY)]),
    ],
    ids=["baseline", "progressive", "progressive-444", "exif-thumbnail", "at-scan-cap", "png-meta", "png-64"],
)
def test_ordinary_files_pass(data):
    check_structure(data, "JPEG" if data[:2] == b"\xff\xd8" else "PNG")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (progressive_jpeg(64, 64, MAX_JPEG_SCANS - 5), f"at most {MAX_JPEG_SCANS}"),
        (b"\xff\xd8" + b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS + 1) + b"\xff\xd9", "marker segments"),
        (
            png_with_chunks((28, 28), [png_chunk(b"tEXt", b"k\x00v")] * (MAX_PNG_ANCILLARY + 1)),
            "metadata chunks",
        ),
        (png_with_chunks((28, 28), [exif_chunk(70_000)]), "eXIf chunk"),
        (png_with_chunks((28, 28), [png_chunk(b"iCCP", b"p\x00\x00" + b"x" * (1 << 20))]), "exceed"),
    ],
    ids=["jpeg-scans", "jpeg-segments", "png-chunks", "png-exif", "png-bytes"],
)
def test_costly_structures_are_refused(data, fragment):
    with pytest.raises(CostlyImage, match=fragment):
        check_structure(data, "JPEG" if data[:2] == b"\xff\xd8" else "PNG")


def test_truncated_and_garbage_files_are_left_to_the_decoder():
    for data, fmt in (
        (b"\xff\xd8\xff", "JPEG"),
        (b"\xff\xd8\x00\x00junk", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00", "PNG"),
    ):
        check_structure(data, fmt)  # nothing costly can be said; Pillow reports the corrupt file
