#!/usr/bin/env bash
# On a lent GPU machine, in the repository's root: install what bench/gpu_prepare.sh packed, then run
# bench.gpu_workers (CUDA checked active, the default worker plan against one process, batch 1024 against
# raw onnxruntime) and leave gpu_workers.md / gpu_workers.json / log.txt in $OUT.
#
#   bash bench/gpu_device.sh part      # a call that only adds the carried part(s) to /tmp/gpu-parts
#   bash bench/gpu_device.sh           # adds any carried part, installs, measures (about 4 minutes)
#
# Each call carries one part by its path (`carry: ["build/gpu/site.tar.xz.part-00"]`, then -01, ...), the
# calls following each other while the machine is warm (/tmp survives between them, not a fresh start).
#
# Extra arguments after `run` go to bench.gpu_workers (e.g. `bash bench/gpu_device.sh run --rounds 1`).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
SITE=/tmp/site
mkdir -p /tmp/gpu-parts "$OUT"
cp -n build/gpu/site.tar.xz.part-* /tmp/gpu-parts/ 2>/dev/null || true
ls -la /tmp/gpu-parts
[ "${1:-run}" = part ] && exit 0
[ "${1:-}" = run ] && shift
if [ ! -d "$SITE/onnxruntime" ]; then
  mkdir -p "$SITE"
  cat /tmp/gpu-parts/site.tar.xz.part-* | tar -C "$SITE" -xJf - || { echo "bundle incomplete"; exit 2; }
fi
# CUDA 13 and cuDNN 9 from the image's nvidia-* pip packages (PyTorch's), where onnxruntime's loader looks.
NV=$(python3 -c "import nvidia, sys; sys.stdout.write(list(nvidia.__path__)[0])")
export LD_LIBRARY_PATH="$NV/cu13/lib:$NV/cudnn/lib:$NV/cublas/lib:${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
timeout 450 python3 -m bench.gpu_workers --provider cuda --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
