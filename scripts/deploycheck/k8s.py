"""deploy/k8s against the upstream Kubernetes JSON schemas (strict: unknown fields are errors), via the
PyPI package kubernetes-validate, and deploy/kserve against the loose schema in deploy/schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from deploycheck import K8S_DIR, KSERVE_FILE, ROOT, SCHEMAS, CheckError
from deploycheck.compose import schema_errors
from deploycheck.dockerfile import start_command

# The oldest Kubernetes minor we support and the newest kubernetes-validate knows; manifests must pass both.
K8S_VERSIONS = ("1.30.0", "latest")


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization_resources(directory: Path = K8S_DIR) -> list[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if kustomization.get("kind") != "Kustomization":
        raise CheckError("deploy/k8s/kustomization.yaml: kind must be Kustomization")
    paths = [directory / r for r in kustomization.get("resources", [])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CheckError(f"kustomization.yaml lists missing files: {', '.join(missing)}")
    listed = {p.name for p in paths}
    stray = sorted(p.name for p in directory.glob("*.yaml") if p.name not in listed | {"kustomization.yaml"})
    if stray:
        raise CheckError(f"manifests not listed in kustomization.yaml: {', '.join(stray)}")
    return paths


def k8s_errors(document: dict[str, Any]) -> list[str]:
    """Strict validation (unknown fields are errors) against each version in K8S_VERSIONS."""
    from kubernetes_validate import utils

    problems = []
    for version in K8S_VERSIONS:
        version = utils.latest_version() if version == "latest" else version
        try:
            utils.validate(document, version, strict=True)
        except utils.ValidationError as e:
            where = ".".join(map(str, e.path)) or "<root>"
            problems.append(f"k8s {e.version}: {where}: {e.message}")
        except utils.SchemaNotFoundError as e:
            problems.append(e.message)
    return problems


def _pod_with(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [container]},
    }


def kserve_errors(document: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = json.loads((SCHEMAS / "kserve.schema.json").read_text())
    problems = schema_errors(jsonschema.Draft202012Validator(schema), document)
    spec = document.get("spec", {})
    containers = list(spec.get("containers", [])) + list(spec.get("predictor", {}).get("containers", []))
    model = spec.get("predictor", {}).get("model")
    if model and "resources" in model:
        containers.append({"name": "model", "image": "x", "resources": model["resources"]})
    for container in containers:
        problems += [f"container {container.get('name')}: {p}" for p in k8s_errors(_pod_with(container))]
    return problems


def serving_containers() -> dict[str, dict[str, Any]]:
    """The containers that run the serving image, in the k8s Deployment and the KServe ServingRuntime."""
    found: dict[str, dict[str, Any]] = {}
    for path in [*kustomization_resources(), KSERVE_FILE]:
        for doc in load_documents(path):
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {}) if doc.get("kind") == "Deployment" else spec
            for c in pod.get("containers", []):
                found[f"{path.relative_to(ROOT)}:{doc['kind']}/{c['name']}"] = c
    return found


def check_k8s() -> list[str]:
    problems: list[str] = []
    kinds = set()
    for path in kustomization_resources():
        for doc in load_documents(path):
            kinds.add(doc["kind"])
            problems += [f"{path.name} {doc['kind']}: {p}" for p in k8s_errors(doc)]
    for needed in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        if needed not in kinds:
            problems.append(f"deploy/k8s has no {needed}")
    kserve_kinds = set()
    for doc in load_documents(KSERVE_FILE):
        kserve_kinds.add(doc.get("kind"))
        problems += [f"{KSERVE_FILE.name} {doc.get('kind')}: {p}" for p in kserve_errors(doc)]
        predictor = doc.get("spec", {}).get("predictor", {})
        if (
            doc.get("kind") == "InferenceService"
            and predictor.get("model", {}).get("protocolVersion") != "v2"
        ):
            problems.append(
                "InferenceService: predictor.model.protocolVersion must be v2 (Open Inference Protocol)"
            )
    if "InferenceService" not in kserve_kinds:
        problems.append(f"{KSERVE_FILE.name} has no InferenceService")
    problems += deployment_semantics()
    return problems


def deployment_semantics() -> list[str]:
    problems = []
    image_cmd = start_command()
    for where, c in serving_containers().items():
        argv = c.get("command", []) + c.get("args", [])
        if argv and argv != image_cmd:
            problems.append(f"{where}: runs {argv}, the image runs {image_cmd}")
    for doc in load_documents(K8S_DIR / "deployment.yaml"):
        pod = doc["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append("Deployment: pod securityContext.runAsNonRoot must be true")
        for c in pod["containers"]:
            probes = {
                k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("startupProbe", "livenessProbe")
            }
            probes["readinessProbe"] = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
            if probes != {
                "startupProbe": "/healthz",
                "livenessProbe": "/healthz",
                "readinessProbe": "/readyz",
            }:
                problems.append(
                    f"Deployment {c['name']}: probes must be startup+liveness /healthz, readiness /readyz"
                )
            if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}):
                problems.append(f"Deployment {c['name']}: no nvidia.com/gpu limit")
            if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                problems.append(f"Deployment {c['name']}: readOnlyRootFilesystem must be true")
    return problems
