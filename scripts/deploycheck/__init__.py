"""Offline checks of the deployment files: Dockerfile facts, Compose, Kubernetes/KServe, and a smoke run.

scripts/deploy_checks.py is the command line; scripts/check_deploy.sh (`make check-deploy`) runs it.
Nothing here needs Docker, a cluster or the network (the smoke run installs from the package registry only).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SERVE_TXT = ROOT / "requirements" / "serve.txt"
SCHEMAS = ROOT / "deploy" / "schemas"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml")
K8S_DIR = ROOT / "deploy" / "k8s"
KSERVE_FILE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
SERVE_STAGE = "serve"  # the Dockerfile's last stage, the default `docker build` target


class CheckError(Exception):
    """A deployment file is wrong or a check cannot run; the message says which and why."""
