"""Build the images with whichever container engine this machine has (`make image`).

    python3 scripts/images.py build [--targets serve,serve-cpu,train]   # build and tag
    python3 scripts/images.py engine                                    # print the engine that would be used

The engine: a Docker whose daemon answers, else podman, else (as root, on Debian) podman installed from the
archive. The base: debian:bookworm-slim when the engine has it or can pull it, else the same thing built here
from Debian's archive (scripts/debian_base.sh) and kept as the engine's local image for the next build.
Standard library only: it runs on the host's python3 before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PODMAN_CONF = ROOT / "deploy" / "podman" / "containers.conf"
OFFICIAL_BASE = "docker.io/library/debian:bookworm-slim"
LOCAL_BASE = "localhost/debian:bookworm-slim"  # what scripts/debian_base.sh makes when the official is away
PULL_TIMEOUT_S = 90
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# target -> the names it is tagged with. Kubernetes and KServe name the versioned tag (deploy/k8s), compose
# the moving one (docker-compose.yml); tests/deploy checks that they agree with this table.
TAGS = {
    "serve": (f"vae-service:{VERSION}", "vae-service:latest"),
    "serve-cpu": (f"vae-service:{VERSION}-cpu", "vae-service:cpu"),
    "train": (f"vae-service-train:{VERSION}", "vae-service-train:latest"),
    "lb": (f"vae-service-lb:{VERSION}", "vae-service-lb:latest"),
}
# Targets built from another Dockerfile than the root one: target -> (Dockerfile, context), relative to ROOT.
OTHER_DOCKERFILES = {"lb": ("deploy/compose/Dockerfile.nginx", "deploy/compose")}


@dataclass(frozen=True)
class Engine:
    name: str  # "docker" or "podman"
    env: dict[str, str]

    def run(self, *args: str, timeout: float | None = None, check: bool = True, quiet: bool = False):
        return subprocess.run(
            [self.name, *args],
            env=self.env,
            check=check,
            timeout=timeout,
            text=True,
            capture_output=quiet,
        )

    def ok(self, *args: str, timeout: float = 60) -> bool:
        try:
            return self.run(*args, timeout=timeout, check=False, quiet=True).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ref(self, name: str) -> str:
        """How this engine spells a locally built name (podman files unqualified names under localhost/)."""
        return f"localhost/{name}" if self.name == "podman" and "/" not in name.split(":")[0] else name


def _docker_answers(env: dict[str, str]) -> bool:
    if not shutil.which("docker"):
        return False
    try:  # a docker CLI without a daemon (or a podman-docker shim) is no engine
        done = subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def find_engine(install: bool = False) -> Engine:
    env = dict(os.environ)
    wanted = env.get("ENGINE", "")
    if wanted not in ("", "docker", "podman"):
        sys.exit(f"ENGINE={wanted}: use docker or podman")
    if wanted != "podman" and _docker_answers(env):
        return Engine("docker", env)
    if wanted == "docker":
        sys.exit("ENGINE=docker, but no Docker daemon answers `docker info`")
    if not shutil.which("podman"):
        if not (install and os.geteuid() == 0 and shutil.which("apt-get")):
            sys.exit(
                "no container engine: install docker.io or podman (as root: apt-get install podman runc)"
            )
        print("no container engine answers: installing podman and runc from Debian", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True)
        # With Recommends, as tested here: netavark, aardvark-dns, slirp4netns and catatonit come that way.
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "podman", "runc"],
            check=True,
            env={**env, "DEBIAN_FRONTEND": "noninteractive"},
        )
    # runc and no default ulimits (deploy/podman/containers.conf says why), unless the user has their own.
    env.setdefault("CONTAINERS_CONF", str(PODMAN_CONF))
    return Engine("podman", env)


def ensure_base(engine: Engine) -> str:
    """The debian:bookworm-slim to build FROM: local, pulled, or made here from Debian's archive."""
    for name in (OFFICIAL_BASE, LOCAL_BASE):
        if engine.ok("image", "inspect", name):
            return name
    print(f"pulling {OFFICIAL_BASE} (at most {PULL_TIMEOUT_S} s)", flush=True)
    if engine.ok("pull", "-q", OFFICIAL_BASE, timeout=PULL_TIMEOUT_S):
        return OFFICIAL_BASE
    print(f"{OFFICIAL_BASE} cannot be pulled: building {LOCAL_BASE} from Debian's archive", flush=True)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "debian_base.sh"), engine.name, LOCAL_BASE],
        env=engine.env,
        check=True,
    )
    return LOCAL_BASE


def ca_bundle() -> str | None:
    """A CA bundle pip is told to use on this host (PIP_CERT), for a proxy that re-signs TLS."""
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    return cert if cert and Path(cert).is_file() else None


def build(engine: Engine, targets: list[str]) -> dict[str, float]:
    """Build each target, tag it with TAGS, and return the seconds each took."""
    base = ensure_base(engine)
    args = ["--build-arg", f"BASE={base}"]
    if engine.name == "podman":
        args += ["--format", "docker", "--pull=never"]  # docker format keeps HEALTHCHECK; the base is local
        ca = ca_bundle()
        if ca:
            args += ["-v", f"{ca}:/run/ca.crt:ro", "--build-arg", "PIP_CERT=/run/ca.crt"]
        # A local wheel folder for the train image (a torch CPU wheel: docs/deploy.md), else pip's own here.
        wheels = os.environ.get("TRAIN_WHEELS") or os.environ.get("PIP_FIND_LINKS")
        if wheels and Path(wheels).is_dir() and "train" in targets:
            args += ["-v", f"{wheels}:/run/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/run/wheels"]
    elif ca_bundle():
        print("note: docker build cannot mount PIP_CERT; pip in the build uses its own CA bundle", flush=True)
    times = {}
    for target in targets:
        tags = [t for name in TAGS[target] for t in ("-t", name)]
        print(f"building {target} ({', '.join(TAGS[target])}) FROM {base}", flush=True)
        start = time.monotonic()
        if target in OTHER_DOCKERFILES:
            dockerfile, context = OTHER_DOCKERFILES[target]
            engine.run("build", *args, "-f", str(ROOT / dockerfile), *tags, str(ROOT / context))
        else:
            engine.run("build", *args, "--target", target, *tags, str(ROOT))
        times[target] = time.monotonic() - start
        print(f"built {target} in {times[target]:.0f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build and tag the images")
    b.add_argument("--targets", default="serve,serve-cpu,train,lb", help="comma-separated Dockerfile targets")
    sub.add_parser("engine", help="print the engine that would be used")
    args = parser.parse_args(argv)
    engine = find_engine(install=args.command == "build")
    if args.command == "engine":
        print(engine.name)
        return 0
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - TAGS.keys())
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {sorted(TAGS)}")
    build(engine, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
