"""docker-compose.yml and docker-compose.cpu.yml against the official Compose Specification schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploycheck import COMPOSE_FILES, CheckError
from deploycheck.compose import (
    check_compose,
    compose_models,
    compose_validator,
    interpolate,
    load_compose,
    merge,
    schema_errors,
    strip_tags,
)


def test_compose_files_and_their_merge_are_valid() -> None:
    assert check_compose() == []


def test_cpu_override_drops_gpu_reservations_and_pins_the_cpu_provider() -> None:
    models = compose_models()
    base, merged = models["docker-compose.yml"], list(models.values())[-1]
    assert base["services"]["vae"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    vae = merged["services"]["vae"]
    assert "devices" not in vae["deploy"]["resources"]["reservations"]
    assert vae["environment"]["VAE_PROVIDER"] == "cpu"
    assert vae["deploy"]["resources"]["limits"] == base["services"]["vae"]["deploy"]["resources"]["limits"]


def test_the_schema_rejects_what_compose_rejects() -> None:
    validator = compose_validator()
    assert schema_errors(validator, {"services": {"vae": {"image": "x"}}}) == []
    assert schema_errors(validator, {"services": {"vae": {"imagee": "x"}}})
    gpu = {"driver": "nvidia", "count": 1}  # capabilities is required
    bad = {"services": {"vae": {"image": "x", "deploy": {"resources": {"reservations": {"devices": [gpu]}}}}}}
    assert schema_errors(validator, bad)


def test_interpolation_uses_defaults_not_the_callers_shell() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${UNSET:-d}/${SET:-d}/${EMPTY:-d}/${EMPTY-d}", env) == "d/v/d/"
    assert interpolate(["$${X}", {"k": "${SET}"}], env) == ["${X}", {"k": "v"}]
    with pytest.raises(CheckError):
        interpolate("${UNSET:?needed}", env)


def test_reset_and_override_tags_merge_like_compose(tmp_path: Path) -> None:
    base = tmp_path / "a.yml"
    base.write_text("services:\n  s:\n    image: x\n    ports: ['1:1']\n    environment: {A: '1', B: '2'}\n")
    over = tmp_path / "b.yml"
    over.write_text("services:\n  s:\n    ports: !reset []\n    environment: !override {C: '3'}\n")
    merged = merge(strip_tags(load_compose(base)), load_compose(over))
    assert merged == {"services": {"s": {"image": "x", "environment": {"C": "3"}}}}


def test_the_compose_files_exist() -> None:
    assert all(f.is_file() for f in COMPOSE_FILES)
