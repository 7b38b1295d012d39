"""docs/limits.md is generated from the Settings descriptions: a limit's default and reason live in one place.

Regenerate: VAE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/service/test_limits_doc.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings
from service.inference.limits import REQUEST_LIMITS

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"

SECTIONS = [
    ("Per request (what one request may ask for)", REQUEST_LIMITS),
    ("Per connection (the HTTP server)",
     ("idle_timeout_s", "header_timeout_s", "max_header_bytes", "body_timeout_s", "max_connections")),
    ("Queues and shutdown", ("max_queue", "max_batch_size", "retry_after_s", "drain_s")),
]  # fmt: skip

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
    return "\n".join(out) + "\n"


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
