# ruff: noqa: E501 - the case table reads best one case to a line
"""One table of hostile and odd inputs, each sent where it applies (JSON base64 and multipart), each answered
with the expected status (a clear 4xx, or 200 for images that are converted), never a 500; and after each,
a valid request still succeeds.

tests/service/test_limits.py covers the individual limits in detail; this table is the issue-7 checklist.
"""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_models
import pytest
from PIL import Image

from service.config import Settings
from service.main import create_app
from vae_contract.imaging import encode_png

# Models built with onnx.helper, not trained: this file needs no torch.
models_dir, client = onnx_models.models_dir, onnx_models.client

SMALL_BODY = 64 * 1024  # max_body_bytes of the "small" app, for the 413 cases


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _save(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking PNG a few hundred bytes long whose header claims width x height 1-bit pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    text = _chunk(b"tEXt", b"Comment\x00" + b"a small file that claims to be huge " * 5)
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + text + idat + _chunk(b"IEND", b"")


def _gradient(size: tuple[int, int] = (28, 28)) -> np.ndarray:
    w, h = size
    return (np.add.outer(np.arange(h), np.arange(w)) * (255 / (w + h))).astype(np.uint8)


DIGIT = encode_png(np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28))
JPEG = _save(Image.fromarray(_gradient()), "JPEG", quality=90)
BOMB = png_bomb()
GIF = _save(Image.fromarray(_gradient()), "GIF")
TIFF = _save(Image.fromarray(_gradient()), "TIFF")
BMP = _save(Image.fromarray(_gradient()), "BMP")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 0 0 moveto 28 28 lineto stroke\nshowpage\n"
RANDOM = np.random.default_rng(7).integers(0, 256, 2048, dtype=np.uint8).tobytes()
PNG16 = _save(Image.fromarray(_gradient().astype(np.uint16) * 257), "PNG")
PALETTE = _save(
    Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0
)
RGBA = _save(Image.fromarray(np.dstack([_gradient()] * 4)), "PNG")
CMYK = _save(Image.new("CMYK", (28, 28), (0, 0, 0, 40)), "JPEG")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _save(Image.fromarray(_gradient((40, 20))), "JPEG", exif=exif.tobytes())


EXIF_ROTATED = _exif_rotated()
Z8 = [0.0] * 8

assert len(BOMB) < 400 and struct.unpack(">II", BOMB[16:24]) == (20000, 20000)
assert Image.open(io.BytesIO(PNG16)).mode.startswith("I")
assert Image.open(io.BytesIO(CMYK)).mode == "CMYK"
assert RANDOM[:3] not in (b"\x89PN", b"\xff\xd8\xff")


@dataclass(frozen=True)
class Case:
    id: str
    route: str
    request: (
        dict[str, Any] | Callable[[], dict[str, Any]]
    )  # httpx keyword arguments (a factory when single-use)
    status: int
    error_type: str | None = None
    fragment: str = ""
    check: Callable[[dict[str, Any]], None] | None = None
    app: str = "default"  # or "small": max_body_bytes = SMALL_BODY
    headers: dict[str, str] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        return self.request() if callable(self.request) else dict(self.request)


def _encoded(n: int) -> Callable[[dict[str, Any]], None]:
    def check(body: dict[str, Any]) -> None:
        assert np.asarray(body["mean"]).shape == (n, 8) and np.isfinite(body["mean"]).all()

    return check


def _reconstructed(n: int) -> Callable[[dict[str, Any]], None]:
    def check(body: dict[str, Any]) -> None:
        assert len(body["images"]) == n and np.asarray(body["scores"]).shape == (n,)
        assert np.isfinite(body["scores"]).all()

    return check


def _interpolated(body: dict[str, Any]) -> None:
    assert len(body["images"]) == 8 and np.asarray(body["latents"]).shape == (8, 8)


# Image bytes: (id, bytes, expected status, error fragment). 200: converted to the model's input.
IMAGES = [
    ("png-bomb-20000x20000", BOMB, 422, "too large"),
    ("gif-named-png", GIF, 422, "only PNG and JPEG"),
    ("tiff-named-png", TIFF, 422, "only PNG and JPEG"),
    ("bmp-named-png", BMP, 422, "only PNG and JPEG"),
    ("eps-named-png", EPS, 422, "only PNG and JPEG"),
    ("zero-bytes", b"", 422, "empty image"),
    ("random-bytes", RANDOM, 422, "only PNG and JPEG"),
    ("truncated-png", DIGIT[: len(DIGIT) // 2], 422, "corrupt or truncated PNG"),
    ("png-signature-only", DIGIT[:8], 422, "corrupt or truncated PNG"),
    ("truncated-jpeg", JPEG[: len(JPEG) // 2], 422, "corrupt or truncated JPEG"),
    ("png-16-bit", PNG16, 200, ""),
    ("png-palette-transparent", PALETTE, 200, ""),
    ("png-rgba", RGBA, 200, ""),
    ("jpeg-cmyk", CMYK, 200, ""),
    ("jpeg-exif-rotated", EXIF_ROTATED, 200, ""),
]


def _image_cases() -> Iterator[Case]:
    for name, data, status, fragment in IMAGES:
        error = "invalid_input" if status == 422 else None
        for route, images, check in (
            ("/v1/encode", [data], _encoded(1)),
            ("/v1/reconstruct", [data, DIGIT], _reconstructed(2)),
            ("/v1/interpolate", [DIGIT, data], _interpolated),
        ):
            bad = images.index(data)
            frag = f"images[{bad}]: |{fragment}" if fragment else ""
            op = route.rsplit("/", 1)[1]
            yield Case(f"{op}-json-{name}", route, {"json": {"images": [b64(d) for d in images]}},
                       status, error, frag, check)  # fmt: skip
            files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)]
            yield Case(f"{op}-multipart-{name}", route, {"files": files}, status, error, frag, check)


def _chunked(total: int) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        def body() -> Iterator[bytes]:
            for _ in range(total // 4096 + 1):
                yield b"x" * 4096

        return {"content": body(), "headers": {"content-type": "application/json"}}

    return make


RAW_JSON = {"content-type": "application/json"}
NPY = {"content-type": "application/x-npy"}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _nan_latents() -> np.ndarray:
    z = np.zeros((2, 8), dtype=np.float32)
    z[1, 3] = np.nan
    return z


def _form(**fields: str) -> dict[str, Any]:
    """A multipart/form-data body of plain fields only (httpx would send those urlencoded)."""
    parts = [f'--b\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    body = ("".join(parts) + "--b--\r\n").encode()
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=b"}}


def _many_parts(n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", b"x", "image/png")) for i in range(n)]


OTHER = [
    # base64 and data URLs
    Case("b64-junk-characters", "/v1/encode", {"json": {"images": ["iVBOR$$%%w0KGgo=="]}},
         422, "invalid_input", "images[0]: invalid base64"),
    Case("b64-bad-padding", "/v1/encode", {"json": {"images": [b64(DIGIT).rstrip("=")[:-1]]}},
         422, "invalid_input", "invalid base64"),
    Case("b64-embedded-newlines", "/v1/reconstruct", {"json": {"images": [b64(DIGIT)[:40] + "\n" + b64(DIGIT)[40:]]}},
         422, "invalid_input", "invalid base64"),
    Case("b64-of-nothing", "/v1/encode", {"json": {"images": ["===="]}}, 422, "invalid_input", "images[0]"),
    Case("data-url-junk", "/v1/encode", {"json": {"images": ["data:image/png;base64,@@not-base64@@"]}},
         422, "invalid_input", "invalid base64"),
    Case("data-url-not-base64", "/v1/encode", {"json": {"images": ["data:image/png," + b64(DIGIT)]}},
         422, "invalid_input", "must be base64"),
    Case("data-url-no-comma", "/v1/encode", {"json": {"images": ["data:image/png;base64"]}},
         422, "invalid_input", "must be base64"),
    Case("data-url-valid", "/v1/encode", {"json": {"images": ["data:image/png;base64," + b64(DIGIT)]}},
         200, check=_encoded(1)),
    Case("images-not-strings", "/v1/encode", {"json": {"images": [None, 3]}},
         422, "invalid_input", "list of base64"),
    # latents
    Case("latents-wrong-length", "/v1/decode", {"json": {"latents": [[0.0] * 9]}},
         422, "invalid_input", "length 9"),
    Case("latents-ragged", "/v1/decode", {"json": {"latents": [Z8, [0.0] * 3]}},
         422, "invalid_input", "same length"),
    Case("latents-nested-deeper", "/v1/decode", {"json": {"latents": [[Z8]]}}, 422, "invalid_input", "2-D"),
    Case("latents-nested-1000-deep", "/v1/decode",
         {"content": b'{"latents": ' + b"[" * 1000 + b"0" + b"]" * 1000 + b"}", "headers": RAW_JSON},
         422, "invalid_input", "latents"),
    Case("json-nested-5000-deep", "/v1/decode",
         {"content": b'{"latents": ' + b"[" * 5000 + b"]" * 5000 + b"}", "headers": RAW_JSON},
         422, "invalid_input", "malformed JSON"),
    Case("latents-empty-list", "/v1/decode", {"json": {"latents": []}}, 422, "invalid_input", "latents"),
    Case("latents-empty-vector", "/v1/decode", {"json": {"latents": [[]]}}, 422, "invalid_input", "length 0"),
    Case("latents-strings", "/v1/decode", {"json": {"latents": [["0.5"] * 8]}}, 422, "invalid_input", "strings"),
    Case("latents-a-string", "/v1/decode", {"json": {"latents": "[[0,0]]"}},
         422, "invalid_input", "list of latent vectors"),
    Case("latents-object", "/v1/decode", {"json": {"latents": {"a": 1}}},
         422, "invalid_input", "list of latent vectors"),
    Case("latents-nan-json", "/v1/decode", {"content": b'{"latents": [[NaN,0,0,0,0,0,0,0]]}', "headers": RAW_JSON},
         422, "invalid_input", "malformed JSON"),
    Case("latents-inf-json", "/v1/decode",
         {"content": b'{"latents": [[Infinity,0,0,0,0,0,0,0]]}', "headers": RAW_JSON},
         422, "invalid_input", "malformed JSON"),
    Case("latents-1e309-overflows", "/v1/decode", {"content": b'{"latents": [[1e309,0,0,0,0,0,0,0]]}', "headers": RAW_JSON},
         422, "invalid_input", "malformed JSON"),
    Case("latents-1e308", "/v1/decode", {"json": {"latents": [[1e308, *Z8[1:]]]}}, 422, "invalid_input", "|v| <="),
    Case("latents-nan-npy", "/v1/decode", {"content": _npy(_nan_latents()), "headers": NPY},
         422, "invalid_input", "NaN or Inf"),
    Case("latents-inf-npy", "/v1/decode", {"content": _npy(np.full((1, 8), np.inf, np.float32)), "headers": NPY},
         422, "invalid_input", "NaN or Inf"),
    Case("latents-npy-object-dtype", "/v1/decode", {"content": _npy(np.array([[None] * 8])), "headers": NPY},
         422, "invalid_input", ".npy"),
    Case("latents-npy-3d", "/v1/decode", {"content": _npy(np.zeros((1, 1, 8), np.float32)), "headers": NPY},
         422, "invalid_input", "2-D"),
    Case("latents-nan-multipart", "/v1/interpolate",
         _form(latents="[[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,NaN]]"),
         422, "invalid_input", "malformed JSON"),
    Case("interpolate-latents-1e308", "/v1/interpolate", {"json": {"latents": [Z8, [1e308] * 8]}},
         422, "invalid_input", "|v| <="),
    Case("interpolate-latents-wrong-length", "/v1/interpolate", {"json": {"latents": [Z8, [0.0] * 2]}},
         422, "invalid_input", "same length"),
    Case("interpolate-latents-nested", "/v1/interpolate", {"json": {"latents": [[Z8], [Z8]]}},
         422, "invalid_input", "2-D"),
    Case("interpolate-latents-empty", "/v1/interpolate", {"json": {"latents": []}},
         422, "invalid_input", "latents"),
    Case("interpolate-latents-1e308-multipart", "/v1/interpolate", _form(latents=f"[{Z8}, {[1e308] * 8}]"),
         422, "invalid_input", "|v| <="),
    Case("sample-multipart-ok", "/v1/sample", _form(n="2", seed="1"), 200,
         check=lambda body: None if len(body["images"]) == 2 else pytest.fail("n=2")),
    # counts and scalars
    Case("sample-huge-n", "/v1/sample", {"json": {"n": 10**9}}, 422, "invalid_input", "n: at most 256"),
    Case("sample-n-2^70", "/v1/sample", {"json": {"n": 2**70}}, 422, "invalid_input", "n"),
    Case("sample-n-1e308", "/v1/sample", {"json": {"n": 1e308}}, 422, "invalid_input", "n"),
    Case("sample-n-string", "/v1/sample", {"json": {"n": "lots"}}, 422, "invalid_input", "n"),
    Case("sample-n-negative", "/v1/sample", {"json": {"n": -5}}, 422, "invalid_input", "n"),
    Case("sample-temperature-nan-multipart", "/v1/sample", _form(temperature="nan"),
         422, "invalid_input", "temperature"),
    Case("sample-temperature-inf-multipart", "/v1/sample", _form(temperature="inf"),
         422, "invalid_input", "temperature"),
    Case("sample-temperature-1e308", "/v1/sample", {"json": {"temperature": 1e308}},
         422, "invalid_input", "temperature"),
    Case("sample-seed-huge", "/v1/sample", {"json": {"seed": 10**30}}, 422, "invalid_input", "seed"),
    Case("interpolate-huge-steps", "/v1/interpolate", {"json": {"latents": [Z8, Z8], "steps": 10**9}},
         422, "invalid_input", "steps: at most 128"),
    Case("interpolate-steps-float", "/v1/interpolate", {"json": {"latents": [Z8, Z8], "steps": 2.5}},
         422, "invalid_input", "steps"),
    Case("manifold-huge-size", "/v1/manifold?model=tiny-2d&size=100000", {}, 422, "invalid_input", "size"),
    # bodies
    Case("body-content-length-over-cap", "/v1/encode", {"json": {"images": [b64(b"x" * SMALL_BODY)]}},
         413, "payload_too_large", "exceeds", app="small"),
    Case("body-chunked-over-cap", "/v1/encode", _chunked(2 * SMALL_BODY),
         413, "payload_too_large", "exceeds", app="small"),
    Case("body-multipart-over-cap", "/v1/reconstruct",
         {"files": [("files", ("a.png", b"\x89PNG\r\n\x1a\n" + b"x" * SMALL_BODY, "image/png"))]},
         413, "payload_too_large", "exceeds", app="small"),
    Case("body-not-json", "/v1/sample", {"content": b"\x00\xff garbage", "headers": RAW_JSON},
         422, "invalid_input", "malformed JSON"),
    Case("body-json-array", "/v1/encode", {"json": [b64(DIGIT)]}, 422, "invalid_input", "must be an object"),
    Case("body-text-plain", "/v1/decode", {"content": b"0,0,0", "headers": {"content-type": "text/plain"}},
         415, "unsupported_media_type", "Content-Type"),
    # multipart abuse
    Case("multipart-3000-file-parts", "/v1/encode", {"files": _many_parts(3000)},
         422, "invalid_input", "multipart"),
    Case("multipart-3000-fields", "/v1/reconstruct",
         {"files": [("files", ("a.png", DIGIT, "image/png"))], "data": {f"f{i}": "1" for i in range(3000)}},
         422, "invalid_input", "multipart"),
    Case("multipart-no-boundary", "/v1/encode",
         {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}},
         422, "invalid_input", "multipart"),
    Case("multipart-garbage", "/v1/encode",
         {"content": RANDOM, "headers": {"content-type": "multipart/form-data; boundary=abc"}},
         422, "invalid_input", ""),
    Case("multipart-huge-part-header", "/v1/encode",
         {"content": b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + b"a" * 20000
                     + b'"\r\n\r\nx\r\n--b--\r\n',
          "headers": {"content-type": "multipart/form-data; boundary=b"}},
         422, "invalid_input", ""),
    # models named by path or URL are never loaded
    Case("model-path-traversal", "/v1/sample", {"json": {"model": "../tiny"}}, 422, "invalid_input", "model"),
    Case("model-absolute-path", "/v1/encode", {"json": {"model": "/etc", "images": [b64(DIGIT)]}},
         422, "invalid_input", "model"),
    Case("model-url", "/v1/decode", {"json": {"model": "http://x", "latents": [Z8]}},
         422, "invalid_input", "model"),
    Case("model-query-url", "/v1/manifold?model=http://x", {}, 422, "invalid_input", "model"),
]  # fmt: skip

CASES = [*_image_cases(), *OTHER]


@pytest.fixture(scope="module")
def small_client(models_dir):
    settings = Settings(models_dir=models_dir, provider="cpu", max_body_bytes=SMALL_BODY, reload_interval_s=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, client, small_client):
    c = small_client if case.app == "small" else client
    method = c.get if case.route.startswith("/v1/manifold") else c.post
    r = method(case.route, **case.kwargs())
    assert r.status_code == case.status, r.text[:500]
    assert "Traceback" not in r.text and 'File "' not in r.text
    if case.status >= 400:
        body = r.json()
        assert body["error_type"] == case.error_type, body
        assert all(part in body["error"] for part in case.fragment.split("|")), body["error"]
    elif case.check is not None:
        case.check(r.json())
    # ...and the service is still fine.
    ok = c.post("/v1/encode", json={"images": [b64(DIGIT)]})
    assert ok.status_code == 200, ok.text


def test_the_table_covers_the_checklist():
    ids = {c.id for c in CASES}
    for needed in ("png-bomb", "gif", "tiff", "bmp", "eps", "zero-bytes", "random", "truncated-png",
                   "truncated-jpeg", "16-bit", "palette", "rgba", "cmyk", "exif", "b64", "data-url",
                   "wrong-length", "nested", "empty", "strings", "nan", "inf", "1e308", "huge-n",
                   "huge-steps", "content-length", "chunked", "3000-file-parts"):  # fmt: skip
        assert any(needed in i for i in ids), needed
    for route in ("encode", "reconstruct", "interpolate", "decode", "sample"):
        assert any(c.route.endswith(route) for c in CASES)
        assert any(f"{route}-multipart" in i for i in ids) or route in ("decode", "sample")


def test_no_model_is_loaded_from_a_request(client):
    registry = client.app.state.registry
    before = dict(registry.models)
    for model in ("../tiny", "/etc", "http://x", "tiny/1", "..", "file:///etc/passwd", "tiny\x00"):
        r = client.post("/v1/sample", json={"model": model})
        assert r.status_code in (404, 422), (model, r.text)
        if "\x00" not in model:
            r = client.get("/v1/manifold", params={"model": model})
            assert r.status_code in (404, 422), (model, r.text)
            r = client.post(f"/v2/models/{model}/infer", json={"inputs": []})
            assert r.status_code in (400, 404, 422), (model, r.text)
    assert registry.models == before
