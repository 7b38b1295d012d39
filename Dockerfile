# syntax=docker/dockerfile:1.7
# VAE Service images (docs/deploy.md).
#   docker build -t vae-service .                        # target `serve` (the default, last stage)
#   docker build --target train -t vae-service-train .   # torch with CUDA and the training CLI
#
# Python 3.11 on an Ubuntu 24.04 CUDA base, which ships only 3.12: we install CPython 3.11 from
# python-build-standalone with uv (`uv python install`, version list pinned by the uv image tag). Those builds
# are relocatable and self-contained (their own OpenSSL, SQLite, libffi) and link against an old glibc, so the
# same /opt/python runs in every stage below. This avoids a third-party PPA (deadsnakes) and copying a
# Debian-built interpreter from python:3.11-slim onto Ubuntu's libraries. Packages are then installed with
# plain pip, exactly as `make check-deploy` builds its fresh virtual environment from the same files.

# ---- uv: only its static binary is used, to fetch the interpreter ------------------------------------------
FROM ghcr.io/astral-sh/uv:0.11.19 AS uv

# ---- python: CPython 3.11 in /opt/python on the smallest CUDA 13 base (shares layers with `serve`) ---------
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS python
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=uv /uv /usr/local/bin/uv
# The link points at the real interpreter, so venvs made from it record /opt/python/... as their home and keep
# working in stages that copy /opt/python alone.
RUN uv python install 3.11 \
    && ln -s "$(realpath "$(uv python find 3.11)")" /usr/local/bin/python3.11 \
    && python3.11 --version

# ---- serve-builder: /opt/venv with requirements/serve.txt (exact pins, no torch) and the project --------
FROM python AS serve-builder
WORKDIR /src
COPY requirements/serve.txt requirements/serve.txt
# --no-deps + `pip check`: the file is the complete closure (scripts/serve_requirements.py); a gap fails here
# instead of being filled with an unpinned version.
RUN "$(realpath /usr/local/bin/python3.11)" -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-virtualenv -r requirements/serve.txt \
    && /opt/venv/bin/pip check
# Only the service package: the serving image carries no training code (and no torch to run it with).
COPY pyproject.toml README.md ./
COPY service/ service/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- train: torch with CUDA (its wheels bring CUDA, cuDNN and NCCL), the training CLI ---------------------
FROM python AS train
# torch 2.13.0 (requirements/constraints.txt) built for CUDA 13.0; pick another index for another CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/work \
    MPLCONFIGDIR=/tmp/matplotlib \
    VAE_MODELS_DIR=/app/models \
    VAE_DATA_DIR=/work/data
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --home-dir /work --no-create-home --shell /usr/sbin/nologin vae
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
# The PyTorch index first, PyPI for everything else; the constraints file pins torch==2.13.0, which the
# index's 2.13.0+cu130 satisfies (a local version label matches its public version).
RUN "$(realpath /usr/local/bin/python3.11)" -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c requirements/constraints.txt \
        --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY service/ service/
COPY training/ training/
# serve-cpu brings the onnxruntime that the export's parity check runs on (CPU, like the check itself).
RUN /opt/venv/bin/pip install --no-cache-dir -c requirements/constraints.txt ".[serve-cpu,train]" \
    && /opt/venv/bin/pip check
COPY --chmod=755 deploy/train-and-export.sh /usr/local/bin/vae-train-and-export
# /app/models holds the default models too, so whichever of `vae` and `train` first mounts the empty compose
# volume seeds it with the same content; /work/{data,runs} exist so their volumes are seeded owned by vae.
COPY --chown=10001:10001 models/ /app/models/
RUN install -d -o 10001 -g 10001 /work /work/data /work/runs
WORKDIR /work
USER 10001:10001
# `vae-train --help`; several GPUs: `torchrun --nproc_per_node=N -m training train --distributed ...`
# (override the entrypoint), or `vae-train-and-export NAME [flags]` to train and publish a model version.
ENTRYPOINT ["vae-train"]
CMD ["--help"]

# ---- serve (default): onnxruntime-gpu 1.31 on CUDA 13 + cuDNN 9, default models baked in ------------------
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS serve
LABEL org.opencontainers.image.title="vae-service" \
      org.opencontainers.image.description="VAE encode/decode/sample over HTTP on onnxruntime (CUDA 13, cuDNN 9)" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --home-dir /app --no-create-home --shell /usr/sbin/nologin vae
COPY --from=python /opt/python /opt/python
COPY --from=serve-builder /opt/venv /opt/venv
# Owned by the service user so a compose named volume seeded from here is writable by the `train` service
# (same uid); the service itself mounts it read-only (compose `:ro`, k8s readOnlyRootFilesystem), and it
# refuses any model whose sha256 disagrees with its manifest.
COPY --chown=10001:10001 models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
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
