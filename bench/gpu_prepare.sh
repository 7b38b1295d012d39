#!/usr/bin/env bash
# Here, on a machine that reaches PyPI: the packages the lent GPU machine lacks, for its Python 3.12, packed
# into build/gpu/ (ignored by git) as xz parts that a device call carries (`carry: ["build/gpu"]`).
#
# The GPU image has PyTorch's CUDA 13 and cuDNN 9 pip libraries, numpy and uvloop, but only the CPU build of
# onnxruntime and none of FastAPI, pydantic or uvicorn. What is packed: onnxruntime-gpu and the serving
# stack at the project's exact pins (grpcio, protobuf, pillow and httpx too, whose versions there may be
# older than the generated gRPC code and the service need).
#
# Size (measured): onnxruntime-gpu 1.31.1's wheel is 255 MB and its CUDA provider library alone is still
# 186 MB after xz -6, while one device call carries at most 64 MiB with the working tree (whose models/ are
# 93 MB tracked today). So the bundle (212 MiB) is split into 40 MiB parts; bench/gpu_device.sh gathers them in
# /tmp/gpu-parts on the lent machine over several calls made while it stays warm (each call: carry one
# part; the last one runs the benchmark), from a working tree under ~20 MiB: unneeded model versions moved out
# of the way for the calls (the benchmark needs only the default model, mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -iE "^$(echo "$1" | sed 's/[-_]/[-_]/g')==" requirements/constraints.txt | head -1; }  # exact pin
SITE=$(mktemp -d)
PKGS="onnxruntime-gpu fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn httptools \
python-multipart annotated-types typing-inspection orjson typing-extensions annotated-doc flatbuffers grpcio \
protobuf prometheus-client pillow httpx httpcore h11 anyio idna sniffio certifi"
python3 -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --target "$SITE" $(for p in $PKGS; do pin "$p" || echo "$p"; done)
rm -rf build/gpu && mkdir -p build/gpu
tar -C "$SITE" -cf - . | xz -6 -T0 | split -b 40m -d - build/gpu/site.tar.xz.part-
rm -rf "$SITE"
ls -la build/gpu
