"""deploy/k8s against the Kubernetes JSON schemas (strict), deploy/kserve against its CRD fields."""

from __future__ import annotations

import copy

from deploycheck import K8S_DIR, KSERVE_FILE
from deploycheck.k8s import check_k8s, k8s_errors, kserve_errors, kustomization_resources, load_documents


def test_manifests_are_valid() -> None:
    assert check_k8s() == []


def test_kustomization_lists_every_manifest() -> None:
    kinds = {d["kind"] for p in kustomization_resources() for d in load_documents(p)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_strict_validation_catches_unknown_fields_and_wrong_types() -> None:
    (deployment,) = load_documents(K8S_DIR / "deployment.yaml")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert k8s_errors(typo)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    assert k8s_errors(wrong)


def test_kserve_uses_the_open_inference_protocol_and_is_checked() -> None:
    docs = {d["kind"]: d for d in load_documents(KSERVE_FILE)}
    assert docs["InferenceService"]["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert "v2" in docs["ServingRuntime"]["spec"]["protocolVersions"]
    broken = copy.deepcopy(docs["InferenceService"])
    del broken["spec"]["predictor"]["model"]["modelFormat"]
    assert kserve_errors(broken)
    bad_container = copy.deepcopy(docs["ServingRuntime"])
    bad_container["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    assert kserve_errors(bad_container)
