"""Write docs/settings.md from `service.config.Settings`: every `VAE_*` variable with its default and reason.

The defaults and reasons are stated once, in Settings; this page is built from them (`make docs` or
`python scripts/settings_doc.py`), and a test checks that the committed page is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "settings.md"

HEADER = """# Settings

Every setting of the service is a `VAE_*` environment variable (`vae-serve` flags override a few of them).
This page is generated from `service/config.py` by `scripts/settings_doc.py`; edit the descriptions there.

| variable | default | what and why |
| --- | --- | --- |
"""


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from service.config import Settings, shown_default
    from service.server.cli import WORKERS_HELP

    rows = []
    for name, field in Settings.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `VAE_{name.upper()}` | `{shown_default(field)}` | {description} |")
    rows.append(f"| `VAE_WORKERS` | `unset` | {WORKERS_HELP} |")  # read by vae-serve before any worker
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
