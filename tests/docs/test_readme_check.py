"""README and docs examples are real: scripts/readme_check.py runs them against a fresh server of the
committed models and compares what they print; its matching rules are checked here on their own first."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("readme_check", ROOT / "scripts" / "readme_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_check"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


rc = _load()


def test_an_ellipsis_stands_for_any_text_within_a_line():
    shown = '{"images":["iVBOR...",...],"seed":7}'
    assert rc.line_matches(shown, '{"images":["iVBORw0K","iVBORx"],"seed":7}')
    assert not rc.line_matches('{"images":["iVBOR...",...],"seed":7}', '{"images":["iVBORw0K"],"seed":8}')
    assert rc.line_matches("x-model-version: 1", "x-model-version: 1")
    assert not rc.line_matches("x-model-version: 1", "x-model-version: 2")


def test_computed_numbers_match_within_a_relative_1e4_and_short_ones_exactly():
    assert rc.line_matches('"scores":[65.97632,92.26134]', '"scores":[65.97635,92.26130]')
    assert not rc.line_matches('"scores":[65.97632,92.26134]', '"scores":[65.99632,92.26134]')
    assert not rc.line_matches('"version":2.5', '"version":2.6')  # fewer than four decimals: exact
    assert not rc.line_matches('"n":[1.0000]', '"n":[1.0000,2]')


def test_a_line_of_ellipsis_stands_for_any_number_of_lines():
    assert rc.lines_match(["...", "b", "..."], ["a", "b", "c", "d"])
    assert rc.lines_match(["a", "...", "d"], ["a", "d"])
    assert not rc.lines_match(["a", "...", "d"], ["a", "b"])
    assert rc.lines_match([], []) and not rc.lines_match([], ["output"])


def test_abbreviations_cut_long_strings_and_lists_yet_still_match():
    line = (
        '{"images":["' + "A" * 60 + '","' + "B" * 60 + '","' + "C" * 60 + '"],'
        '"latents":[[0.1,0.2,0.3,0.4,0.5,0.6,0.7],[1,2,3,4,5,6,7],[8,9,10,11,12,13,14]],"shape":[1,1,28,28]}'
    )
    short = rc.abbreviate(line)
    assert short == (
        '{"images":["' + "A" * 32 + '...","' + "B" * 32 + '...",...],'
        '"latents":[[0.1,0.2,0.3,...],...],"shape":[1,1,28,28]}'
    )
    assert rc.line_matches(short, line)
    message = '{"error":"a message with spaces, longer than forty characters, stays whole"}'
    assert rc.abbreviate(message) == message


def test_console_blocks_parse_into_commands_and_their_outputs(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```console\n$ echo a \\\n  b\na b\n$ true\n$ printf 'x\\ny\\n'\nx\n...\n```\n"
        "```python\nprint(1)\n```\n```python\nimport x  # 127.0.0.1:8000\n```\n"
    )
    monkeypatch.setattr(rc, "ROOT", tmp_path)
    doc = rc.parse("page.md")
    assert [(e.command, e.shown) for e in doc.examples] == [
        ("echo a \\\n  b", ["a b"]),
        ("true", []),
        ("printf 'x\\ny\\n'", ["x", "..."]),
    ]
    assert [s.source for s in doc.scripts] == ["import x  # 127.0.0.1:8000"]  # the other names no server


@pytest.mark.slow
def test_every_example_in_the_readme_and_docs_prints_what_it_shows():
    """Starts vae-serve on free ports of 127.0.0.1 with the committed models, as `make readme-check` does."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_check.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " 0 failed" in result.stdout
