"""Secrets and auth fail closed, and nothing a client sends can forge or corrupt a log line."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import warnings

import pytest
from pydantic import ValidationError
from serving import ROOT, committed_model, vae_serve

from service.config import Settings
from service.logs import PLAIN_FORMAT, PlainFormatter, escape_controls
from service.main import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cr3t-Key-value"


# --- VAE_API_KEYS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f'["{SECRET}",', "neither a JSON list of strings nor comma-separated"),
        (f'[1, "{SECRET}"]', "every key must be a non-empty string"),
        (f'["{SECRET}", ""]', "every key must be a non-empty string"),
        ("", "set but holds no key"),
        ("  ", "set but holds no key"),
        (" , ,", "set but holds no key"),
        ("[]", "set but holds no key"),
    ],
)
def test_a_bad_key_list_is_refused_without_echoing_it(monkeypatch, value, message):
    monkeypatch.setenv("VAE_API_KEYS", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert message in str(info.value)
    assert SECRET not in str(info.value)  # what vae-serve prints


@pytest.mark.parametrize(("value", "keys"), [("none", None), ("NONE", None), ("a, b", ["a", "b"])])
def test_auth_off_is_an_explicit_value(monkeypatch, value, keys):
    monkeypatch.setenv("VAE_API_KEYS", value)
    got = Settings().api_keys
    assert (got if got is None else [k.get_secret_value() for k in got]) == keys


def test_vae_serve_refuses_to_start_with_a_malformed_key_list_and_does_not_print_it(tmp_path):
    env = {**os.environ, "VAE_API_KEYS": f'["{SECRET}", 7', "VAE_MODELS_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "service.server.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "api_keys" in out.stderr and SECRET not in out.stderr + out.stdout
    empty = subprocess.run(
        [sys.executable, "-m", "service.server.cli"], env={**env, "VAE_API_KEYS": ""}, capture_output=True,
        text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert empty.returncode != 0 and "set but holds no key" in empty.stderr


def test_401s_are_counted_under_their_route(tmp_path):
    settings = Settings(
        models_dir=committed_model(tmp_path), provider="cpu", api_keys="k1", reload_interval_s=0
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/decode", json={"latents": [[0.0, 0.0]]}).status_code == 401
        assert client.post("/v1/decode", json={}, headers={"x-api-key": "wrong"}).status_code == 401
        assert client.get("/v2/models/mnist-2d", headers={"authorization": "Bearer nope"}).status_code == 401
        ok = client.post("/v1/decode", json={"latents": [[0.0, 0.0]]}, headers={"x-api-key": "k1"})
        assert ok.status_code == 200
        metrics = client.get("/metrics").text
    counts: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if line.startswith("vae_http_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            key = (labels.get("route", ""), labels.get("status", ""))
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    assert counts[("/v1/decode", "401")] == 2 and counts[("/v1/decode", "200")] == 1
    assert counts[("/v2/models/{model_name}", "401")] == 1
    assert ("unmatched", "401") not in counts


# --- log lines --------------------------------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 ERROR service.access [-] forged"
ATTACKS = [
    "/v1/models/x%0D%0A" + FORGED.replace(" ", "%20"),  # CR LF, then a line of our own format
    "/v1/models/y%0A%1B%5B31mred%0D",  # LF, an ANSI escape, a lone CR
    "/v1/models/z%E2%80%A8" + FORGED.replace(" ", "%20"),  # U+2028 LINE SEPARATOR
    "/v1/models/w%C2%85next",  # U+0085 NEXT LINE
]


def _send_raw(port: int, path: str, request_id: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + request_id
            + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_nothing_a_client_sends_can_forge_a_log_line(tmp_path, json_lines):
    log = tmp_path / "serve.log"
    env = {"VAE_LOG_JSON": "true" if json_lines else "false", "VAE_LOG_LEVEL": "debug"}
    with vae_serve(committed_model(tmp_path), log, env) as (url, _proc):
        port = int(url.rsplit(":", 1)[1])
        for path in ATTACKS:
            for rid in (b"ok-id", b"bad\xe2\x80\xa8id", b"bad\x1b[2Jid"):
                response = _send_raw(port, path, rid)
                if b"\x1b" in rid:  # a control character in a header: the HTTP parser refuses it
                    assert response.startswith(b"HTTP/1.1 400 "), response[:80]
                    assert response.endswith(b'"error_type": "invalid_input"}')
                else:
                    assert response.startswith(b"HTTP/1.1 "), response[:80]
                    assert b"\r\nx-request-id: " in response.lower()
    # Undecodable or control bytes in the header never become the request id.
    lines = log.read_bytes().decode("utf-8").split("\n")[:-1]
    assert lines, "no log lines"
    access = []
    for line in lines:
        if json_lines:
            entry = json.loads(line)  # every line is one whole JSON object
            if entry["logger"] == "service.access":
                access.append(entry["message"])
            assert entry["request_id"] in ("-", "ok-id") or re.fullmatch("[0-9a-f]{32}", entry["request_id"])
        else:
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+ \[[\w.:-]+\] ", line), line
            assert line.isprintable(), line
            assert not line.startswith(FORGED)
            if " service.access " in line:
                access.append(line)
    assert sum("forged" in message for message in access) == 4  # 2 attacks x 2 request ids, one line each
    if json_lines:
        assert any("\r\n" + FORGED in message for message in access)  # kept exactly, escaped by JSON
    else:
        assert any("x\\x0d\\x0a" + FORGED in line for line in access)
        assert any("z\\u2028" + FORGED in line for line in access)


def test_escape_controls():
    assert escape_controls("plain text, é ü 東京") == "plain text, é ü 東京"
    assert escape_controls("a\r\nb\tc\x00\x7f\x9b\u2028") == "a\\x0d\\x0ab\\x09c\\x00\\x7f\\x9b\\u2028"


def test_plain_lines_carry_the_time_as_logging_formats_it():
    ours, logging_own = PlainFormatter(PLAIN_FORMAT), logging.Formatter(PLAIN_FORMAT)
    # Within a second, across a second's edge, and back: the per-second part must follow each record.
    for created in (1700000000.0, 1700000000.999, 1700000001.0005, 1700000001.5, 1700000000.25, 1799999999.9):
        record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "line", None, None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.formatTime(record) == logging_own.formatTime(record)
        assert ours.formatTime(record, "%H:%M") == logging_own.formatTime(record, "%H:%M")
