"""docs/limits.md is generated from the Settings descriptions: a limit's default and reason live in one place.

Regenerate: VAE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/service/test_limits_doc.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings
from service.inference.limits import REQUEST_LIMITS
from vae_contract.image_structure import (
    MAX_EXIF_BYTES,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_ANCILLARY,
    MAX_PNG_ANCILLARY_BYTES,
    MAX_PNG_CHUNKS,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"

SECTIONS = [
    ("Per request (what one request may ask for)", REQUEST_LIMITS),
    ("Per connection (the HTTP and gRPC servers)",
     ("idle_timeout_s", "header_timeout_s", "max_header_bytes", "body_timeout_s", "send_timeout_s",
      "max_connections")),
    ("The gRPC port (with the rows above)",
     ("grpc_max_connections", "grpc_max_streams_per_connection", "grpc_max_calls",
      "grpc_max_connection_age_s")),
    ("Models", ("max_model_bytes",)),
    ("Queues and shutdown", ("max_queue", "max_batch_size", "retry_after_s", "drain_s")),
]  # fmt: skip

TAIL = f"""
## Fixed bounds

Image files are refused from their structure, before a decoder sees them, when decoding them would be costly
whatever their pixel count (`vae_contract/image_structure.py`): a JPEG with more than {MAX_JPEG_SCANS} scans
(a progressive file decodes every pixel once per scan) or more than {MAX_JPEG_SEGMENTS} marker segments
before its image data; a PNG with more than {MAX_PNG_CHUNKS} chunks, more than {MAX_PNG_ANCILLARY}
metadata (ancillary) chunks, more than {MAX_PNG_ANCILLARY_BYTES} bytes of them, or an eXIf chunk over
{MAX_EXIF_BYTES} bytes. With the pixel cap
every accepted decode is short, so a request that times out leaves no decode running for long.

gRPC (grpcio's C-core) bounds its connections with channel arguments set from the settings above
(`service/grpc/server.py`): `grpc.max_allowed_incoming_connections`, `grpc.server_handshake_timeout_ms`
(header_timeout_s), `grpc.max_connection_idle_ms` (idle_timeout_s, at least 60 s),
`grpc.max_concurrent_streams`, `grpc.max_connection_age_ms` and its grace, keepalive pings,
`grpc.max_receive_message_length`
(max_body_bytes) and `grpc.max_send_message_length` (max_response_bytes). Each call's request message must
arrive whole within body_timeout_s (the RPCs are served as streams so that the service can time the read).
A second server cannot bind the same gRPC port (`grpc.so_reuseport` is off except between the `--workers`
processes of one server).

Two bounds HTTP has and gRPC does not, because grpcio (1.85) offers no mechanism for them:
- At its connection cap C-core closes each new connection; it cannot shed the longest-idle one as the HTTP
  guard does. Sockets that never finish the HTTP/2 handshake go at header_timeout_s, established idle ones at
  max(idle_timeout_s, 60 s): with the cap held by idle connections, a new client waited 54 s to be served
  (measured with a cap of 16). No channel argument evicts an idle connection for a new one.
- A response whose client keeps its flow-control window shut stays buffered until the connection's age
  (grpc_max_connection_age_s, then its grace). `grpc.aio`'s servicer context has no `cancel()`; an abort
  during the pending write is refused by C-core (TOO_MANY_OPERATIONS) or, with the initial metadata sent
  first, queues the status behind the unsent message, so nothing is freed either way (four unread 12.8 MB
  answers stayed held for the 33 s observed). Keepalive pings are answered by the client's transport, so they
  do not reveal it. The synchronous server's `context.cancel()` would free it, at the price of serving gRPC
  from threads instead of the event loop.

The request timeout is counted from the moment a request's headers have been read. A new connection's wait
in the listen queue comes before that and is not counted: uvloop accepts one connection per event-loop
iteration, so a burst of connections to a loaded worker waits a few seconds (docs/benchmarks.md, the
starvation measurements).
"""


HEAD = """# Limits and timeouts

Every bound the service puts on a request, a connection or a queue, with its default and the reason for it.
Each is a `Settings` field (`service/config.py`), set with the environment variable shown. This page is
generated from those fields' descriptions by `tests/service/test_limits_doc.py`, which fails when the two
disagree; the checks themselves live in `service/inference/limits.py`, shared by `/v1`, `/v2` and every
other protocol. Errors are `{"error": ..., "error_type": ...}`: bad input is 422 (400 on `/v2`), a body over
the cap 413, a full queue 503 with `Retry-After`, a request over its time 504.
"""


def _default(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value} ({value >> 20} MiB)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render() -> str:
    fields = Settings.model_fields
    out = [HEAD]
    for title, names in SECTIONS:
        out += [f"\n## {title}\n", "| variable | default | what and why |", "| --- | --- | --- |"]
        for name in names:
            field = fields[name]
            text = (field.description or "").replace("|", "\\|")
            out.append(f"| `VAE_{name.upper()}` | {_default(field.default)} | {text} |")
    return "\n".join(out) + "\n" + TAIL


def test_every_request_limit_is_a_documented_setting():
    for name in REQUEST_LIMITS:
        assert Settings.model_fields[name].description, name


def test_docs_limits_is_generated_from_settings():
    text = render()
    if os.environ.get("VAE_WRITE_DOCS"):
        DOC.write_text(text, encoding="utf-8")
    if not DOC.is_file():
        pytest.fail(f"{DOC} is missing; {__doc__.splitlines()[2]}")
    assert DOC.read_text(encoding="utf-8") == text, __doc__.splitlines()[2]
