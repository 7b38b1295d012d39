#!/usr/bin/env bash
# Regenerate service/grpc/grpc_predict_v2_pb2{.py,.pyi,_grpc.py} from the .proto beside them (needs
# grpcio-tools, in the dev extra). The generated modules are committed so that serving needs only grpcio and
# protobuf at run time.
#
# The messages are registered in a descriptor pool of their own, not protobuf's default one: Triton's client
# defines the same `inference.*` names in the default pool, and a process that imports both (a test driving
# our server with tritonclient.grpc, a gateway embedding either) would otherwise fail with "duplicate symbol".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-.}"  # another folder: write there instead (tests/service/test_grpc.py compares the result)
mkdir -p "$OUT"
"$PYTHON" -m grpc_tools.protoc -I . --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    service/grpc/grpc_predict_v2.proto
PB2="$OUT/service/grpc/grpc_predict_v2_pb2.py"
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(/' "$PB2"
grep -q '^_POOL = _descriptor_pool.DescriptorPool()$' "$PB2" || { echo "gen_grpc.sh: pool patch failed" >&2; exit 1; }
echo "generated $PB2, grpc_predict_v2_pb2.pyi and grpc_predict_v2_pb2_grpc.py"
