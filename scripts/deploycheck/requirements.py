"""The project's requirements as pinned sets: pyproject.toml's extras walked to their closure against the
exact pins of requirements/constraints.txt, with environment markers judged for a named target platform.

One walker serves two checks: scripts/serve_requirements.py writes the serving image's closure from the
metadata installed here, and deploycheck.platforms proves that the pins resolve on every platform a user may
install on, from the package registry's metadata for that platform's wheels.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploycheck import ROOT

PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
PYTHON = "3.11"  # the interpreter the Makefile, the image and CI use; requires-python allows newer ones


class RequirementsError(Exception):
    """The pins do not resolve: a package unpinned, a pin outside a range, no metadata or no wheel."""


@dataclass(frozen=True)
class Platform:
    """A target for the resolution: the wheel tags pip accepts for it and the values its markers see."""

    name: str
    tag: str  # the wheel platform tag; on Linux the newest glibc the target has (manylinux_2_28_x86_64)
    system: str  # platform.system()
    machine: str  # platform.machine() as that OS spells it
    sys_platform: str
    os_name: str
    environment: dict[str, str] = field(init=False, compare=False, repr=False)

    @property
    def wheel_platforms(self) -> tuple[str, ...]:
        """pip --platform values. pip widens macOS tags to older releases itself, but takes a PEP 600
        manylinux tag literally, so every older glibc back to manylinux2014 (2.17) is listed."""
        if not self.tag.startswith("manylinux_2_"):
            return (self.tag,)
        minor, arch = self.tag.removeprefix("manylinux_2_").split("_", 1)
        return (*(f"manylinux_2_{m}_{arch}" for m in range(int(minor), 16, -1)), f"manylinux2014_{arch}")

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "environment",
            {
                "implementation_name": "cpython",
                "implementation_version": f"{PYTHON}.0",
                "os_name": self.os_name,
                "platform_machine": self.machine,
                "platform_python_implementation": "CPython",
                "platform_release": "",
                "platform_system": self.system,
                "platform_version": "",
                "python_full_version": f"{PYTHON}.0",
                "python_version": PYTHON,
                "sys_platform": self.sys_platform,
            },
        )


# The four platforms the README documents. glibc 2.28 (RHEL 8, Debian 10, Ubuntu 20.04 and later) is the floor
# of the Linux wheels we pin; onnxruntime 1.31's macOS wheels need macOS 14.
PLATFORMS = {
    p.name: p
    for p in (
        Platform("linux-x86_64", "manylinux_2_28_x86_64", "Linux", "x86_64", "linux", "posix"),
        Platform("linux-aarch64", "manylinux_2_28_aarch64", "Linux", "aarch64", "linux", "posix"),
        Platform("macos-arm64", "macosx_14_0_arm64", "Darwin", "arm64", "darwin", "posix"),
        Platform("windows-x86_64", "win_amd64", "Windows", "AMD64", "win32", "nt"),
    )
}
IMAGE_PLATFORM = PLATFORMS["linux-x86_64"]  # the serving image (Dockerfile)

Pins = dict[str, tuple[str, str]]  # canonical name -> (name as written, exact version)
# (name, version) pairs -> canonical name -> that release's Requires-Dist lines
RequiresLookup = Callable[[list[tuple[str, str]]], dict[str, list[str]]]


def read_constraints(path: Path = CONSTRAINTS) -> Pins:
    """canonical name -> (name as written, exact version) for every `name==version` line."""
    pins: Pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise RequirementsError(f"{path.name}: {line!r} is not an exact `name==version` pin")
        pins[canonicalize_name(req.name)] = (req.name, specs[0].version)
    return pins


def project_requirements(extras: Iterable[str], path: Path = PYPROJECT) -> list[Requirement]:
    """The core dependencies plus those of `extras`; an extra that names the project itself
    (`vae-service[api]`) is expanded in place, as pip does for self-referencing extras."""
    project = tomllib.loads(path.read_text())["project"]
    own = canonicalize_name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out = [Requirement(r) for r in project.get("dependencies", [])]
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise RequirementsError(f"pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == own:
                if req.marker is not None:
                    raise RequirementsError(f"{line!r}: a marker on a self-reference is not supported")
                todo.extend(sorted(req.extras))
            else:
                out.append(req)
    return out


def applies(req: Requirement, platform: Platform, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = platform.environment
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in {"", *extras})


def closure(roots: list[Requirement], pins: Pins, platform: Platform, requires: RequiresLookup) -> Pins:
    """Walk the dependency closure of `roots` on `platform`, level by level (one `requires` call per level).

    Every package reached must be pinned, and its pin must satisfy every range that reaches it: with exact
    pins that is the whole of a resolution, so a pass here means pip installs exactly these versions.
    """
    chosen: Pins = {}
    extras_seen: dict[str, set[str]] = {}
    known: dict[str, list[str]] = {}
    frontier = [(r, "pyproject.toml") for r in roots if applies(r, platform, set())]
    while frontier:
        expand: list[str] = []
        for req, parent in frontier:
            key = canonicalize_name(req.name)
            if key not in pins:
                raise RequirementsError(
                    f"{platform.name}: {req.name} (needed by {parent}) is not pinned in constraints.txt"
                )
            name, version = pins[key]
            if not req.specifier.contains(version, prereleases=True):
                raise RequirementsError(
                    f"{platform.name}: constraints.txt pins {name}=={version}, but {parent} needs {req}"
                )
            new_extras = set(req.extras) - extras_seen.get(key, set())
            if key in chosen and not new_extras:
                continue
            chosen[key] = (name, version)
            extras_seen.setdefault(key, set()).update(req.extras)
            expand.append(key)
        expand = list(dict.fromkeys(expand))
        missing = [chosen[k] for k in expand if k not in known]
        if missing:
            found = requires(missing)
            for name, version in missing:
                key = canonicalize_name(name)
                if key not in found:
                    raise RequirementsError(f"{platform.name}: no metadata for {name}=={version}")
                known[key] = found[key]
        frontier = [
            (child, f"{chosen[k][0]}=={chosen[k][1]}")
            for k in expand
            for child in map(Requirement, known[k])
            if applies(child, platform, extras_seen[k])
        ]
    return chosen
