#!/usr/bin/env bash
# Regenerate the committed protobuf modules of containerd's Snapshots API
# (src/nydus/snapshotter/api/*_pb2.py and .pyi) from the .proto files beside them.
# Needs grpcio-tools (a test dependency); tests/snapshotter/test_protos.py checks that the
# committed modules are what this script produces.
set -euo pipefail
cd "$(dirname "$0")/../src"
PY=${PYTHON:-../.venv/bin/python}
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
  nydus/snapshotter/api/mount.proto nydus/snapshotter/api/snapshots.proto
