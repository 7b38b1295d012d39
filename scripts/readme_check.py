"""Run every example in README.md and docs/*.md against a fresh server and compare what they print.

    python scripts/readme_check.py              # check: exit 1 and show a diff when an output changed
    python scripts/readme_check.py --update     # rewrite the shown outputs (and docs/ images) from this run
    python scripts/readme_check.py --url URL    # use a running server instead of starting one

What runs:
- A ```console block: each line starting with `$ ` is a command (a trailing backslash continues it on the next
  line); the lines after it, up to the next command, are what it prints (stdout and stderr together). Commands
  run under bash, one after another, in a scratch folder where `docs/examples` is the repository's (the
  images the examples upload) and `docs/` is otherwise empty; `localhost:8000` and `127.0.0.1:8000` name the
  server under test, `127.0.0.1:8081` its gRPC port, `.venv/bin/` and `python` this interpreter's environment.
- A ```python block that talks to `127.0.0.1:8000` or `:8081` runs as a script in the same folder, with the
  same addresses; it passes when it exits 0. One that names another host (a deployment's) is not run.
- Other blocks (```bash, ```text, ...) are not run: they say what takes minutes, needs Docker, or starts a
  second server.

How an output matches (the placeholders, the only ones):
- `...` inside a line stands for any text, including none: `{"images":["iVBORw0KGgo...", ...]}`.
- A line that is only `...` stands for any number of lines, including none.
- A number with four or more decimals matches within a relative 1e-4 (absolute 1e-6), so that another
  CPU's last digits do not count; every other character must be equal.
- An image the commands write under `docs/` must equal the committed one up to the same kind of noise (mean
  absolute difference under one grey level); `--update` copies it over the committed one.

Screenshots (`--screenshots`): docs/explorer.png and docs/explorer-colour.png are taken by the browser tests
(tests/web, headless Chromium from `make browser`) of a server of the same committed models, and rewritten
with `--update`; without Chromium those tests skip and the check says so.

`--update` keeps a shown output that still matches; one that does not is replaced by the real output, with
strings over 40 characters without a space cut to 32 and `...`, number lists cut to three numbers and `...`,
and lines over 240 characters cut at a comma and `...`. Review the diff (git diff README.md docs/) before
committing it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
EXAMPLES = "docs/examples"
COMMAND_TIMEOUT_S = 300
ELLIPSIS = "..."

# --- matching


FLOAT = re.compile(r"-?\d+\.\d{4,}(?:[eE][-+]?\d+)?")
ANY_FLOAT = r"(-?\d+\.\d+(?:[eE][-+]?\d+)?)"


def _line_regex(pattern: str) -> tuple[re.Pattern[str], list[float]]:
    """A regex for one shown line, and the numbers it expects in its capture groups, in order."""
    parts: list[str] = []
    numbers: list[float] = []
    for i, chunk in enumerate(pattern.split(ELLIPSIS)):
        if i:
            parts.append(".*?")
        pos = 0
        for m in FLOAT.finditer(chunk):
            parts.append(re.escape(chunk[pos : m.start()]))
            parts.append(ANY_FLOAT)
            numbers.append(float(m.group()))
            pos = m.end()
        parts.append(re.escape(chunk[pos:]))
    return re.compile("".join(parts), re.DOTALL), numbers


def line_matches(pattern: str, actual: str) -> bool:
    regex, numbers = _line_regex(pattern)
    m = regex.fullmatch(actual)
    if m is None:
        return False
    return all(
        math.isclose(float(got), want, rel_tol=1e-4, abs_tol=1e-6)
        for got, want in zip(m.groups(), numbers, strict=True)
    )


def lines_match(pattern: list[str], actual: list[str]) -> bool:
    """Shown lines against printed ones; a line that is only `...` takes any number of printed lines."""
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(pattern):
                memo[i, j] = j == len(actual)
            elif pattern[i].strip() == ELLIPSIS:
                memo[i, j] = any(match(i + 1, k) for k in range(j, len(actual) + 1))
            else:
                memo[i, j] = j < len(actual) and line_matches(pattern[i], actual[j]) and match(i + 1, j + 1)
        return memo[i, j]

    return match(0, 0)


def _cut_strings(line: str) -> str:
    def cut(m: re.Match[str]) -> str:
        text = m.group(1)
        return f'"{text[:32]}..."' if len(text) > 40 and " " not in text else m.group()

    return re.sub(r'"((?:[^"\\]|\\.)*)"', cut, line)  # every string, left to right: quotes stay paired


def _cut_number_lists(line: str) -> str:
    number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    return re.sub(rf"\[({number}),({number}),({number})(?:,{number}){{4,}}\]", r"[\1,\2,\3,...]", line)


def _cut_string_lists(line: str) -> str:
    item = r'"[^"\\]*"'
    return re.sub(rf"\[({item}),({item})(?:,{item})+\]", r"[\1,\2,...]", line)


def abbreviate(line: str) -> str:
    """A shown form of a printed line that still matches it: long strings, lists and lines cut with `...`."""
    short = _cut_string_lists(_cut_number_lists(_cut_strings(line)))
    short = re.sub(r"\[(\[[^\[\]]*\]),(\[[^\[\]]*\])(?:,\[[^\[\]]*\])+\]", r"[\1,...]", short)
    if len(short) > 240:
        cut = short.rfind(",", 0, 200)
        short = short[: cut + 1 if cut > 0 else 200] + ELLIPSIS
    if not line_matches(short, line):  # never write a pattern that fails on the output it came from
        return line
    return short


# --- documents


@dataclass
class Example:
    document: str
    command: str  # as shown, continuation lines joined with newlines
    shown: list[str]
    start: int  # index of the first shown line in the document's lines
    end: int  # one past the last shown line


@dataclass
class Script:
    document: str
    source: str
    line: int


@dataclass
class Document:
    path: str
    lines: list[str]
    examples: list[Example] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)


def parse(path: str) -> Document:
    lines = (ROOT / path).read_text(encoding="utf-8").split("\n")
    doc = Document(path, lines)
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence in ("```console", "```python"):
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = list(range(i + 1, j))
            if fence == "```python":
                if any(f"127.0.0.1:{port}" in lines[k] for k in body for port in (8000, 8081)):
                    doc.scripts.append(Script(path, "\n".join(lines[k] for k in body), i + 1))
            else:
                doc.examples.extend(_examples(path, lines, body))
            i = j
        i += 1
    return doc


def _examples(path: str, lines: list[str], body: list[int]) -> Iterator[Example]:
    k = 0
    while k < len(body):
        if not lines[body[k]].startswith("$ "):
            raise SystemExit(f"{path}:{body[k] + 1}: a console block must start with a `$ ` command")
        command = [lines[body[k]][2:]]
        while command[-1].rstrip().endswith("\\") and k + 1 < len(body):
            k += 1
            command.append(lines[body[k]])
        start = body[k] + 1  # the shown output begins after the command's last line
        k += 1
        shown = []
        while k < len(body) and not lines[body[k]].startswith("$ "):
            shown.append(lines[body[k]])
            k += 1
        yield Example(path, "\n".join(command), shown, start, start + len(shown))


# --- running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    http: str  # host:port
    grpc: str


def localise(text: str, target: Target) -> str:
    for shown in ("localhost:8000", "127.0.0.1:8000"):
        text = text.replace(shown, target.http)
    text = text.replace("127.0.0.1:8081", target.grpc)
    return text.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")


def run_command(command: str, target: Target, cwd: Path) -> list[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("COLUMNS", None)  # piped, argparse wraps --help at 80 columns, as for a user's pipe
    result = subprocess.run(
        ["bash", "-c", localise(command, target)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    out = result.stdout.replace(target.http, "localhost:8000").replace(target.grpc, "127.0.0.1:8081")
    return out.rstrip("\n").split("\n") if out.strip() else []


def run_script(script: Script, target: Target, cwd: Path) -> str | None:
    """None when the script exits 0; else its output's last lines."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", localise(script.source, target)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if result.returncode == 0:
        return None
    return "\n".join((result.stdout + result.stderr).strip().split("\n")[-8:])


class Server:
    """`vae-serve` on free ports of 127.0.0.1 with the committed models, one worker; stopped on exit."""

    def __init__(self, models_dir: Path) -> None:
        self.target = Target(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        env = dict(
            os.environ,
            VAE_HOST="127.0.0.1",
            VAE_PORT=self.target.http.rsplit(":", 1)[1],
            VAE_GRPC_PORT=self.target.grpc.rsplit(":", 1)[1],
            VAE_MODELS_DIR=str(models_dir),
            VAE_WORKERS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (open while the server runs; closed by stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.server.cli"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = 300) -> float:
        tic = time.monotonic()
        while time.monotonic() - tic < timeout_s:
            if self.process.poll() is not None:
                raise SystemExit(f"vae-serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{self.target.http}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - tic
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"vae-serve was not ready in {timeout_s:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def images_close(written: Path, committed: Path) -> bool:
    import numpy as np
    from PIL import Image

    with Image.open(written) as a, Image.open(committed) as b:
        if a.size != b.size or a.mode != b.mode:
            return False
        diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(diff.mean()) < 1.0


def check(documents: list[str], target: Target, update: bool, out: list[str]) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="readme-check-") as tmp:
        work = Path(tmp)
        (work / "docs").mkdir()
        (work / EXAMPLES).symlink_to(ROOT / EXAMPLES, target_is_directory=True)
        for path in documents:
            doc = parse(path)
            replacements: list[tuple[Example, list[str]]] = []
            for ex in doc.examples:
                printed = run_command(ex.command, target, work)
                first = ex.command.split("\n")[0]
                if lines_match(ex.shown, printed):
                    out.append(f"ok    {path}: $ {first}")
                    continue
                if update:
                    replacements.append((ex, [abbreviate(line) for line in printed]))
                    out.append(f"new   {path}: $ {first}")
                    continue
                failures += 1
                out.append(f"FAIL  {path}: $ {first}")
                out.extend(f"        shown:   {line}" for line in ex.shown or ["(nothing)"])
                out.extend(f"        printed: {line}" for line in printed or ["(nothing)"])
            for script in doc.scripts:
                problem = run_script(script, target, work)
                out.append(f"{'ok   ' if problem is None else 'FAIL '} {path}:{script.line}: python block")
                if problem is not None:
                    failures += 1
                    out.extend("        " + line for line in problem.split("\n"))
            if replacements:
                lines = doc.lines
                for ex, new in sorted(replacements, key=lambda r: r[0].start, reverse=True):
                    lines[ex.start : ex.end] = new
                (ROOT / path).write_text("\n".join(lines), encoding="utf-8")
        for written in sorted((work / "docs").glob("*.png")):
            committed = ROOT / "docs" / written.name
            if not committed.exists():
                out.append(f"note  docs/{written.name} is written by an example but not committed")
            elif images_close(written, committed):
                out.append(f"ok    docs/{written.name}")
            elif update:
                shutil.copyfile(written, committed)
                out.append(f"new   docs/{written.name}")
            else:
                failures += 1
                out.append(f"FAIL  docs/{written.name}: the example writes a different image")
    return failures


SCREENSHOT_TESTS = "test_readme_screenshot or test_label_colour_model_upload_samples_and_interpolation"


def screenshots(update: bool, models_dir: Path, out: list[str]) -> int:
    """Run the browser tests that take the docs' screenshots; the number of failures (0 when they skip)."""
    env = dict(os.environ, VAE_DOCS_MODELS_DIR=str(models_dir))
    if update:
        env["VAE_UPDATE_DOCS_SCREENSHOT"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/web"]
    result = subprocess.run(
        [*command, "-k", SCREENSHOT_TESTS], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    summary = (result.stdout.strip().split("\n") or [""])[-1]
    if result.returncode != 0:
        out.append(f"FAIL  screenshots: {summary}")
        out.extend("        " + line for line in result.stdout.strip().split("\n")[-20:])
        return 1
    if "skipped" in summary and "passed" not in summary:
        reason = next((line for line in result.stdout.split("\n") if "SKIPPED" in line), summary)
        out.append(f"note  screenshots not taken: {reason.strip()}")
    else:
        verb = "new  " if update else "ok   "
        out.append(f"{verb} docs/explorer.png, docs/explorer-colour.png ({summary})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite changed outputs from this run")
    parser.add_argument("--url", help="host:port of a running server (default: start one on free ports)")
    parser.add_argument("--grpc", default="127.0.0.1:8081", help="its gRPC host:port, with --url")
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help="models the server loads")
    parser.add_argument(
        "--screenshots", action="store_true", help="also take docs/explorer*.png (needs Chromium)"
    )
    parser.add_argument("documents", nargs="*", default=DOCUMENTS, help="files to check (default: all)")
    args = parser.parse_args(argv)
    out: list[str] = []
    server = None
    tic = time.monotonic()
    try:
        if args.url:
            target = Target(args.url.removeprefix("http://"), args.grpc)
        else:
            server = Server(Path(args.models_dir))
            print(f"vae-serve ready in {server.wait_ready():.1f} s", flush=True)
            target = server.target
        failures = check(args.documents, target, args.update, out)
        if args.screenshots:
            failures += screenshots(args.update, Path(args.models_dir), out)
    finally:
        if server is not None:
            server.stop()
    print("\n".join(out))
    checked = sum(1 for line in out if not line.startswith(" "))
    print(f"{checked - failures} passed, {failures} failed ({time.monotonic() - tic:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
