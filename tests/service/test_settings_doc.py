"""docs/settings.md is built from Settings (defaults and reasons stated once) and kept current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_page_is_current():
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert page == module.render(), "docs/settings.md is stale: run `python scripts/settings_doc.py`"


def test_vae_serve_help_lists_every_setting(capsys):
    import pytest

    from service.config import Settings
    from service.server.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    names = [f"VAE_{name.upper()}" for name in Settings.model_fields] + ["VAE_WORKERS"]
    assert [name for name in names if f"  {name} " not in shown] == []
    assert "docs/settings.md" in shown


def test_the_settings_page_lists_the_worker_count():
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert "| `VAE_WORKERS` | `unset` |" in page
