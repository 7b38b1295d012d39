"""scripts/images.py and scripts/image_test.py without an engine: the names `make image` gives agree with
what compose and Kubernetes run, and a Kubernetes container spec becomes the engine arguments it means."""

from __future__ import annotations

import image_test
import images
import yaml
from deploycheck import ROOT


def _deployment() -> tuple[dict, dict]:
    doc = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    pod = doc["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_kubernetes_kserve_and_compose_name_the_images_make_image_builds() -> None:
    for where, _, container in image_test._serving_pods():
        assert container["image"] == images.TAGS["serve"][0], where
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    assert f"{entry['newName']}:{entry['newTag']}" == images.TAGS["serve"][0]
    compose = (ROOT / "docker-compose.yml").read_text()
    for target in ("serve", "train", "lb"):
        assert images.TAGS[target][1] in compose, target
    assert images.TAGS["serve-cpu"][1] in (ROOT / "docker-compose.cpu.yml").read_text()


def test_a_deployment_container_runs_with_its_security_context_mounts_and_limits() -> None:
    podman = images.Engine("podman", {})
    pod, container = _deployment()
    ref, opts, argv, ports = image_test.container_args(pod, container, podman)
    assert ref == "localhost/vae-service:0.1.0"
    joined = " ".join(opts)
    assert "--user 10001:10001" in joined
    assert "--read-only" in opts and "--tmpfs /tmp" in joined
    assert "--cap-drop ALL" in joined and "--security-opt no-new-privileges" in joined
    assert "--memory 6g" in joined
    assert "-p 127.0.0.1::8000" in joined and "-p 127.0.0.1::8081" in joined  # loopback only
    assert "--entrypoint vae-serve" in joined
    assert argv == ["--host", "0.0.0.0", "--port", "8000", "--models-dir", "/app/models"]
    assert ports == {"http": 8000, "grpc": 8081}


def test_podman_names_local_images_under_localhost() -> None:
    assert images.Engine("podman", {}).ref("vae-service:cpu") == "localhost/vae-service:cpu"
    assert images.Engine("docker", {}).ref("vae-service:cpu") == "vae-service:cpu"
    assert images.Engine("podman", {}).ref("docker.io/library/debian:bookworm-slim").startswith("docker.io/")


def test_scripts_copied_into_images_are_executable_in_git() -> None:
    # The Dockerfiles COPY them without --chmod (which needs BuildKit), so the mode comes from the checkout.
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "-s", "deploy/train-and-export.sh", "deploy/compose/nginx-entrypoint.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(listed) == 2 and all(line.startswith("100755") for line in listed), listed
