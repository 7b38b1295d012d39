"""The serving image's exact start command, run outside Docker: a fresh venv built from requirements/serve.txt
the way the Dockerfile builds /opt/venv, the project built from what the image COPYs, the baked-in models, and
the image's VAE_* environment; host, port and models dir swapped for 127.0.0.1, a free port and the folder
the image bakes in. Ready means /readyz answers 200 and /v1/models lists the models."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploycheck import ROOT, SERVE_STAGE, SERVE_TXT, CheckError
from deploycheck.dockerfile import copies, option_value, stage, stage_env, start_command, with_options

CACHE = ROOT / ".cache" / "serve-venv"


def venv_key() -> str:
    h = hashlib.sha256(SERVE_TXT.read_bytes())
    h.update(f"{sys.version}|{platform.machine()}|{sys.base_prefix}".encode())
    return h.hexdigest()[:16]


def _run(argv: list[str], **kwargs: Any) -> None:
    print("+", shlex.join(str(a) for a in argv), flush=True)
    subprocess.run(argv, check=True, **kwargs)


def fresh_venv() -> Path:
    """A venv with exactly requirements/serve.txt, cached under .cache/ by the file's hash."""
    venv = CACHE / venv_key()
    done = venv / ".complete"
    if done.exists():
        print(f"reusing {venv.relative_to(ROOT)} (keyed by the sha256 of requirements/serve.txt)")
        return venv
    if CACHE.exists():
        shutil.rmtree(CACHE)  # older keys: the file changed, so they are stale
    CACHE.mkdir(parents=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # Exactly the Dockerfile's install: the complete pinned closure, no resolution, then a consistency check.
    _run([*pip, "install", "-q", "--no-deps", "--require-virtualenv", "-r", str(SERVE_TXT)])
    _run([*pip, "check"])
    done.touch()
    return venv


def _docker_copy(src: Path, workdir: Path, dest: str, into_dir: bool) -> None:
    """COPY semantics: a folder's contents go to dest; a file goes into dest/ or becomes dest."""
    target = workdir / dest.lstrip("/")
    if src.is_dir():
        shutil.copytree(
            src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True
        )
    elif into_dir or dest.endswith("/") or dest in (".", "./"):
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target / src.name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def install_project(venv: Path) -> None:
    """Install the project as the image does: build it from what the build stage COPYs, --no-deps."""
    builder = stage("build")
    with tempfile.TemporaryDirectory(prefix="vae-image-src-") as tmp:
        for sources, dest in copies(builder):
            if not any(s.startswith("requirements/") for s in sources):
                for src in sources:
                    _docker_copy(ROOT / src, Path(tmp), dest, into_dir=len(sources) > 1)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "-q", "--no-deps", "--force-reinstall", "--no-cache-dir", tmp])
        _run([*pip, "check"])
    torch_check = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
    if subprocess.run([str(venv / "bin" / "python"), "-c", torch_check]).returncode:
        raise CheckError("torch is importable in the serving environment")


def baked_models_dir() -> Path:
    """The build-context folder the serve stage COPYs to the start command's --models-dir."""
    target = option_value(start_command(), "--models-dir").rstrip("/")
    for sources, dest in copies(stage(SERVE_STAGE)):
        if dest.rstrip("/") == target and len(sources) == 1:
            return ROOT / sources[0]
    raise CheckError(f"the serve stage copies nothing to {target}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_startup_log(path: Path) -> None:
    """The image's provider 'auto' says in each worker process which provider it chose, all alike, and
    onnxruntime prints no errors: on a host without CUDA it is never asked for CUDA
    (service/inference/cuda.py); red lines there are a regression."""
    lines = path.read_text(errors="replace").splitlines()
    said = "onnxruntime provider:"
    choices = {ln.split(said, 1)[1].strip() for ln in lines if said in ln}
    noise = [ln for ln in lines if ":onnxruntime:" in ln or "Failed to load" in ln]
    if len(choices) != 1 or noise:
        raise CheckError(
            f"startup log: expected one provider choice and no onnxruntime errors, got {sorted(choices)} "
            f"and {noise[:3]}"
        )
    print(f"startup log: {said} {choices.pop()[:200]}")


def smoke(ready_timeout: float = 180.0) -> None:
    models = baked_models_dir()
    manifests = sorted(models.glob("*/*/model.json"))
    if not manifests:
        raise CheckError(
            f"no models under {models.relative_to(ROOT)}/ (<name>/<version>/model.json): the image "
            "bakes them in, so the check needs them. Commit them first: "
            "`FORCE=1 bash scripts/make_models.sh data models`."
        )
    venv = fresh_venv()
    install_project(venv)

    image_argv = start_command()
    port = free_port()
    argv = with_options(image_argv, host="127.0.0.1", port=str(port), models_dir=str(models))
    executable = venv / "bin" / argv[0]
    if not executable.exists():
        raise CheckError(f"{argv[0]} is not installed by the project (console script missing in {venv})")
    argv[0] = str(executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    image_env = {k: v for k, v in stage_env(stage(SERVE_STAGE)).items() if k.startswith("VAE_")}
    env.update(image_env, VAE_HOST="127.0.0.1", VAE_PORT=str(port), VAE_MODELS_DIR=str(models))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    print(f"image command: {shlex.join(image_argv)}")
    print(f"running:       {shlex.join(argv)}")
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="vae-smoke-") as cwd, open(Path(cwd) / "server.log", "w+") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + ready_timeout
            status = 0
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise CheckError(f"vae-serve exited with {proc.returncode} before it was ready")
                try:
                    status, _ = _get(base + "/readyz", timeout=2)
                except OSError:
                    status = 0
                if status == 200:
                    break
                time.sleep(0.5)
            else:
                raise CheckError(f"/readyz did not answer 200 within {ready_timeout:.0f}s (last: {status})")
            status, body = _get(base + "/v1/models")
            if status != 200:
                raise CheckError(f"/v1/models answered {status}: {body[:300]!r}")
            listing = json.loads(body)
            print(f"/readyz 200; /v1/models 200 ({len(manifests)} model versions baked in)")
            check_startup_log(Path(cwd) / "server.log")
            print(json.dumps(listing, indent=1)[:1500])
        except CheckError:
            log.seek(0)
            print("---- server log ----\n" + log.read()[-6000:], file=sys.stderr)
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
