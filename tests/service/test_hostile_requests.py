"""Requests built to make the server work hard for nothing, against a real `vae-serve` on 127.0.0.1.

Each is refused from its shape or structure before the costly part starts: the answer is small, the server's
peak memory barely moves, and nothing it sends is echoed back whole. Bounded: one server for the module,
every client call with a timeout, bodies of at most 15 MB.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hostile_inputs import (
    exif_chunk,
    png_with_chunks,
    png_with_trailing_chunks,
    progressive_jpeg,
    ztxt_chunks,
)
from PIL import Image
from serving import committed_model, vae_serve

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20
# What a refusal may add to the server's peak RSS: parsing the largest body we send (a 15 MB JSON object of
# a million keys) costs about this much; building a 422 for each of its elements cost 1.4 GB.
PARSE_ALLOWANCE = 400 * MB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("hostile")
    models = committed_model(root, "mnist-2d")
    with vae_serve(models, root / "server.log", env={"VAE_GRPC_PORT": "0"}) as (url, proc):
        yield url, proc.pid


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _post(url: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_a_million_element_list_is_refused_by_its_length(server):
    url, pid = server
    before = _peak_rss(pid)
    body = b'{"input": [' + b",".join([b"0"] * 1_000_000) + b"]}"
    r = _post(url, "/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert len(r.content) < 2048
    assert "input: at most 256 items (got 1000000)" in r.json()["error"]
    assert _peak_rss(pid) - before < PARSE_ALLOWANCE


def test_a_million_unknown_keys_are_counted_not_listed(server):
    url, pid = server
    before = _peak_rss(pid)
    body = json.dumps({f"k{i}": 0 for i in range(1_000_000)}).encode()
    r = _post(url, "/v1/sample", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    data = r.json()
    assert len(r.content) < 2048
    assert [e["loc"] for e in data["detail"]] == [["body", "k0"], ["body", "k1"], ["body", "k2"]]
    assert data["omitted"] == 999_997 and "(and 999997 more)" in data["error"]
    assert _peak_rss(pid) - before < PARSE_ALLOWANCE


def test_many_element_errors_name_three_and_count_the_rest(server):
    url, _ = server
    r = _post(url, "/v1/embeddings", json={"input": [0] * 200})  # within the count, every element wrong
    assert r.status_code == 422
    data = r.json()
    assert len(data["detail"]) == 3 and data["omitted"] == 198  # the str branch, then each element
    assert data["error"].endswith("(and 198 more)")


@pytest.mark.parametrize(
    ("path", "field"), [("/v1/embeddings", "model"), ("/v1/sample", "model"), ("/v1/sample", "label")]
)
def test_a_15_mb_client_string_is_not_echoed(server, path, field):
    url, _ = server
    payload = {field: "m" * (15 * MB)}
    if path == "/v1/embeddings":
        payload["input"] = []
    r = _post(url, path, json=payload)
    assert r.status_code in (404, 422), r.text[:300]
    assert len(r.content) < 2048


def test_a_15_mb_key_is_shown_by_its_head(server):
    url, _ = server
    r = _post(url, "/v1/sample", json={"k" * (15 * MB): 1})
    assert r.status_code == 422 and len(r.content) < 2048
    assert r.json()["detail"][0]["loc"][1].endswith(f"... ({15 * MB} characters)")


def test_a_15_mb_model_path_is_not_echoed(server):
    url, _ = server
    r = httpx.get(url + "/v1/models/" + "m" * 30_000, timeout=30)  # under the header cap
    assert r.status_code == 404 and len(r.content) < 2048


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("charset", ["punycode", "idna", "utf-16", "rot13", "x" * 5000])
def test_multipart_charsets_outside_the_allowlist_are_415(server, charset):
    url, _ = server
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        + "\u00e9" * 10
        + f"\r\n--{boundary}--\r\n"
    ).encode("utf-8")
    ctype = f"multipart/form-data; boundary={boundary}; charset={charset}"
    r = _post(url, "/v1/encode", content=body, headers={"content-type": ctype})
    assert r.status_code == 415, r.text
    assert "utf-8, latin-1 (iso-8859-1) or ascii" in r.json()["error"] and len(r.content) < 1024


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", "latin-1", "ISO-8859-1", "us-ascii", "ascii"])
def test_multipart_charsets_in_the_allowlist_are_read(server, charset):
    url, _ = server
    ctype_params = {"charset": charset}
    files = {"files": ("x.png", _png(), "image/png")}
    request = httpx.Request("POST", url + "/v1/encode", files=files, data={"model": "mnist-2d"})
    body = request.read()
    ctype = request.headers["content-type"] + "; " + "; ".join(f"{k}={v}" for k, v in ctype_params.items())
    r = _post(url, "/v1/encode", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text


COSTLY_IMAGES = [
    ("jpeg-4000x4000-1000-scans", lambda: progressive_jpeg(4000, 4000, 1000), "JPEG with 1006 scans"),
    ("png-2000-ztxt", lambda: png_with_chunks((28, 28), ztxt_chunks(2000)), "more than 64 metadata"),
    (
        "png-trailing-ztxt",
        lambda: png_with_trailing_chunks((28, 28), ztxt_chunks(100)),
        "more than 64 metadata",
    ),
    ("png-14mb-exif", lambda: png_with_chunks((28, 28), [exif_chunk(14 * MB)]), "eXIf chunk of"),
    (
        "png-big-text",
        lambda: png_with_chunks((28, 28), [png_chunk_text(i) for i in range(8)]),
        "exceed 1048576 bytes",
    ),
]


def png_chunk_text(i: int) -> bytes:
    from hostile_inputs import png_chunk

    return png_chunk(b"tEXt", b"k%d\x00" % i + b"x" * (200 * 1024))


@pytest.mark.parametrize(("name", "make", "fragment"), COSTLY_IMAGES, ids=[c[0] for c in COSTLY_IMAGES])
def test_costly_images_are_refused_from_their_structure(server, name, make, fragment):
    url, pid = server
    before = _peak_rss(pid)
    data = make()
    r = _post(url, "/v1/encode", files={"files": ("x", data, "application/octet-stream")})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"] and r.json()["error"].startswith("images[0]: ")
    assert _peak_rss(pid) - before < 100 * MB


def test_legal_progressive_jpegs_and_pngs_with_metadata_still_decode(server):
    url, _ = server
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, "JPEG", progressive=True)
    jpeg = buf.getvalue()
    png = png_with_chunks((28, 28), [*ztxt_chunks(4, 4096), exif_chunk(4096)])
    images = [base64.b64encode(x).decode() for x in (jpeg, png, progressive_jpeg(64, 64, 50))]
    r = _post(url, "/v1/encode", json={"images": images})
    assert r.status_code == 200, r.text
