"""Do the exact pins resolve on every platform a user may install on? Asked of the package registry.

pip judges environment markers for the machine it runs on even with `--platform`, so it cannot resolve for
another platform by itself. The walk is ours instead (deploycheck.requirements.closure, markers judged for the
target), and pip answers the two questions only the registry can: does a wheel of `name==version` exist for
the target's tags, and what does that wheel require? One `pip install --dry-run --no-deps --report` per level
of the dependency tree, reading the registry's PEP 658 metadata (no wheel is downloaded).

A pass is cached in the user's cache folder ($XDG_CACHE_HOME or ~/.cache, then vae-service/resolution/),
keyed by the project's requirements, constraints.txt, the platform and the extras: reruns with unchanged
requirements, fresh clones on the same machine included, ask nothing of the network.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from packaging.utils import canonicalize_name

from deploycheck.requirements import (
    PLATFORMS,
    PYPROJECT,
    PYTHON,
    Pins,
    Platform,
    RequirementsError,
    RequiresLookup,
    closure,
    project_requirements,
    read_constraints,
)

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vae-service" / "resolution"
PIP_TIMEOUT_S = 120  # one level of the tree: a few dozen metadata files
DEFAULT_INDEX = "https://pypi.org/simple"


class RegistryUnreachable(Exception):
    """The package index does not answer: the check cannot run here (not a failure of the pins)."""


def index_url() -> str:
    """The index pip uses here: PIP_INDEX_URL or pip's configuration, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        url = out.stdout.strip() if out.returncode == 0 else ""
    return (url or DEFAULT_INDEX).rstrip("/")


@functools.cache
def probe_registry(timeout: float = 10.0) -> str:
    """Raise RegistryUnreachable unless the index answers for a package we pin; return its URL."""
    url = index_url()
    if not url.startswith(("http://", "https://")):
        return url  # a local index answers or fails by itself
    try:
        with urllib.request.urlopen(f"{url}/onnxruntime/", timeout=timeout) as response:
            response.read(1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RegistryUnreachable(f"{url} is unreachable ({exc})") from None
    return url


def pip_requires(platform: Platform) -> RequiresLookup:
    """A RequiresLookup that asks pip for the wheels of `platform` (CPython 3.11) in one call."""

    def lookup(items: list[tuple[str, str]]) -> dict[str, list[str]]:
        with tempfile.TemporaryDirectory(prefix="vae-resolve-") as tmp:
            report = Path(tmp) / "report.json"
            argv = [
                sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                "--dry-run", "--ignore-installed", "--no-deps", "--only-binary=:all:",
                *(arg for tag in platform.wheel_platforms for arg in ("--platform", tag)),
                "--python-version", PYTHON, "--implementation", "cp",
                "--retries", "2", "--timeout", "30", "--report", str(report),
                *(f"{name}=={version}" for name, version in items),
            ]  # fmt: skip
            # Our pins only: a machine-wide PIP_CONSTRAINT must not change what is asked for.
            env = {**os.environ, "PIP_CONSTRAINT": ""}
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
            except subprocess.TimeoutExpired:
                raise RequirementsError(f"{platform.name}: pip took over {PIP_TIMEOUT_S} s") from None
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or [done.stderr]
                raise RequirementsError(f"{platform.name}: " + " ".join(e.strip() for e in errors)[:600])
            installs = json.loads(report.read_text())["install"]
        found: dict[str, list[str]] = {}
        for item in installs:
            meta = item["metadata"]
            found[canonicalize_name(meta["name"])] = list(meta.get("requires_dist") or [])
        return found

    return lookup


def cache_key(platform: Platform, extras: tuple[str, ...]) -> str:
    """What the answer depends on: the project's requirements (not all of pyproject.toml) and the pins."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [project["name"], project.get("dependencies"), project.get("optional-dependencies")]
    h = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode())
    h.update(json.dumps(sorted(read_constraints().items())).encode())  # the pins, not the comments
    h.update(f"{platform}|{','.join(extras)}|{PYTHON}".encode())
    return h.hexdigest()[:20]


def check_platform(platform: Platform, extras: tuple[str, ...], pins: Pins | None = None) -> Pins:
    """The pinned closure of `pip install .[extras]` on `platform`; RequirementsError where it fails."""
    cached = CACHE / f"{platform.name}-{'-'.join(extras)}-{cache_key(platform, extras)}.json"
    if cached.exists():
        return {k: (n, v) for k, (n, v) in json.loads(cached.read_text()).items()}
    roots = project_requirements(extras)
    probe_registry()
    chosen = closure(roots, pins or read_constraints(), platform, pip_requires(platform))
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"{platform.name}-{'-'.join(extras)}-*.json"):
        stale.unlink()
    cached.write_text(json.dumps(chosen, indent=1, sort_keys=True))
    return chosen


def check_many(
    targets: list[tuple[str, tuple[str, ...]]], workers: int = 4
) -> dict[tuple[str, tuple[str, ...]], Pins | RequirementsError | RegistryUnreachable]:
    """check_platform for several (platform name, extras) at once: the time is spent waiting on the index."""

    def one(target: tuple[str, tuple[str, ...]]) -> Pins | RequirementsError | RegistryUnreachable:
        try:
            return check_platform(PLATFORMS[target[0]], target[1])
        except (RequirementsError, RegistryUnreachable) as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(targets, pool.map(one, targets), strict=True))


def check_all(extras: tuple[str, ...] = ("serve",), names: list[str] | None = None) -> list[str]:
    """Problems, one line each, for `extras` on every platform in `names` (all four by default)."""
    problems = []
    for name in names or list(PLATFORMS):
        try:
            chosen = check_platform(PLATFORMS[name], extras)
        except RequirementsError as exc:
            problems.append(str(exc))
            continue
        runtime = sorted(n for n, _ in chosen.values() if canonicalize_name(n).startswith("onnxruntime"))
        listed = ", ".join(runtime)
        print(f"  {name}: .[{','.join(extras)}] resolves, {len(chosen)} pinned packages, {listed}")
    return problems
