# VAE Service images (docs/deploy.md). `make image` builds all three; by hand:
#   docker build -t vae-service .                             # `serve`: onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels
#   docker build --target serve-cpu -t vae-service:cpu .     # onnxruntime's CPU build, for hosts without a GPU
#   docker build --target train -t vae-service-train .       # torch and the training CLI
#
# Every layer comes from Debian's archive or PyPI, nothing else: the base is debian:bookworm-slim (or the same
# thing built here by scripts/debian_base.sh from the archive, BASE=...), Python 3.11 is Debian's, and every
# Python package is an exact pin of requirements/. CUDA and cuDNN are the nvidia-* wheels onnxruntime-gpu names
# in its [cuda,cudnn] extras, so no CUDA base image is needed: the NVIDIA Container Toolkit mounts the driver.
ARG BASE=debian:bookworm-slim

# ---- runtime: Debian's Python 3.11 and the service user; every image below starts here ------------------
FROM ${BASE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Debian's own versions (security updates included on rebuild): pinning them would break the build the day the
# archive replaces them, and the archive keeps no old versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt \
        /var/log/dpkg.log \
    && groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --home-dir /app --no-create-home --shell /usr/sbin/nologin vae

# ---- build: venv support and the project's wheel (service/ and the models/ contract: no training code) -----
FROM runtime AS build
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/ requirements/
COPY pyproject.toml README.md ./
COPY service/ service/
COPY vae_contract/ vae_contract/
# The build backend comes from PyPI at the pins (pip's isolated build environment honours PIP_CONSTRAINT).
# PIP_CERT (every stage that runs pip): a CA bundle mounted at build time where a proxy re-signs TLS
# (`podman build -v /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro --build-arg PIP_CERT=/run/ca.crt`).
ARG PIP_CERT
ENV PIP_CONSTRAINT=/src/requirements/constraints.txt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3.11 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- the two serving environments: the complete pinned closure, installed --no-deps and checked -----------
# requirements/serve.txt is the closure of `.[serve]` (scripts/serve_requirements.py); `pip check` fails the
# build on any gap instead of resolving it to an unpinned version. The project itself goes in last, and pip
# and setuptools leave: nothing installs into a serving image after it is built.
FROM build AS venv-gpu
ARG PIP_CERT
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-virtualenv -r requirements/serve.txt -r requirements/cuda.txt \
    && /opt/venv/bin/pip install --no-deps --require-virtualenv /wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# onnxruntime (CPU) has the same four dependencies as onnxruntime-gpu at the same version (constraints.txt pins
# both), so the CPU closure is serve.txt with that one name swapped.
FROM build AS venv-cpu
ARG PIP_CERT
RUN sed 's/^onnxruntime-gpu==/onnxruntime==/' requirements/serve.txt > /tmp/serve-cpu.txt \
    && python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-virtualenv -r /tmp/serve-cpu.txt \
    && /opt/venv/bin/pip install --no-deps --require-virtualenv /wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- train: torch and the training CLI --------------------------------------------------------------------
# torch==2.13.0 from PyPI is the CUDA build on Linux x86-64 (its nvidia-* wheels come along). A local wheel
# directory (a CPU build, a mirror) can stand in: `podman build -v DIR:DIR:ro --build-arg PIP_FIND_LINKS=DIR`.
FROM build AS venv-train
ARG PIP_CERT
ARG PIP_FIND_LINKS
COPY training/ training/
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-virtualenv ".[serve-cpu,train]" \
    && /opt/venv/bin/pip check

FROM runtime AS train
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/work \
    MPLCONFIGDIR=/tmp/matplotlib \
    VAE_MODELS_DIR=/app/models \
    VAE_DATA_DIR=/work/data
COPY --from=venv-train /opt/venv /opt/venv
# Executable in git (mode 755): plain COPY keeps it, and builds without BuildKit (no --chmod) work too.
COPY deploy/train-and-export.sh /usr/local/bin/vae-train-and-export
# /app/models holds the served models too, so whichever of `vae` and `train` first mounts the empty compose
# volume seeds it with the same content; /work/{data,runs} exist so their volumes are seeded owned by vae.
COPY --chown=10001:10001 models/ /app/models/
RUN install -d -o 10001 -g 10001 /work /work/data /work/runs
WORKDIR /work
USER 10001:10001
# `vae-train --help`; `vae-train-and-export NAME [flags]` trains and publishes a model version.
ENTRYPOINT ["vae-train"]
CMD ["--help"]

# ---- service: what both serving images share (they differ only in /opt/venv) -------------------------------
FROM runtime AS service
LABEL org.opencontainers.image.title="vae-service" \
      org.opencontainers.image.description="VAE encode/decode/sample over HTTP and gRPC on onnxruntime" \
      org.opencontainers.image.licenses="MIT"
# Only the versions the default version policy (latest:2) loads: .dockerignore leaves older ones out. Owned by
# the service user so a compose named volume seeded from here is writable by `train` (same uid); the service
# mounts it read-only and refuses any model whose sha256 disagrees with its manifest.
COPY --chown=10001:10001 models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_GRPC_PORT=8081 \
    VAE_MODELS_DIR=/app/models \
    VAE_PROVIDER=auto
WORKDIR /app
USER 10001:10001
# 8000: HTTP (/v1, /v2, /metrics); 8081: the Open Inference Protocol over gRPC.
EXPOSE 8000 8081
# Ready means every model is loaded, verified and warmed up; urllib raises on a 503, so python exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# scripts/check_deploy.sh runs exactly this command (host, port and models dir swapped) in a fresh venv.
CMD ["vae-serve", "--host", "0.0.0.0", "--port", "8000", "--models-dir", "/app/models"]

# ---- serve-cpu: onnxruntime's CPU build (hosts without an NVIDIA GPU) --------------------------------------
FROM service AS serve-cpu
COPY --from=venv-cpu /opt/venv /opt/venv

# ---- serve (default target): onnxruntime-gpu with CUDA 13 and cuDNN 9 from PyPI ---------------------------
# The NVIDIA Container Toolkit reads these: every GPU the runtime is given, the driver's compute and
# nvidia-smi libraries (`docker run --gpus all`, Kubernetes' device plugin). Without a GPU it serves on the CPU.
FROM service AS serve
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=venv-gpu /opt/venv /opt/venv
