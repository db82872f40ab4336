#!/usr/bin/env bash
# Generates the Python stubs of the worker protocol into python/stagetree/gen/ (not
# committed) from proto/stagetree/v1/worker.proto.
#
# Uses Debian's protoc and grpc_python_plugin (packages protobuf-compiler and
# protobuf-compiler-grpc). Where those are missing but the Python package grpcio-tools
# is installed (a machine with pip), `python -m grpc_tools.protoc` is used instead.
# The generated modules import each other relatively, so `stagetree.gen` is a package:
#   from stagetree.gen import worker_pb2, worker_pb2_grpc
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
proto_dir="$root/proto"
proto="stagetree/v1/worker.proto"
out="$here/stagetree/gen"
python="${PYTHON:-/usr/bin/python3}"
[ -x "$python" ] || python="python3"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

plugin="${GRPC_PYTHON_PLUGIN:-/usr/bin/grpc_python_plugin}"
if command -v protoc >/dev/null && [ -x "$plugin" ]; then
  protoc -I "$proto_dir" \
    --python_out="$tmp" \
    --grpc_out="$tmp" --plugin=protoc-gen-grpc="$plugin" \
    "$proto_dir/$proto"
elif "$python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  "$python" -m grpc_tools.protoc -I "$proto_dir" \
    --python_out="$tmp" --grpc_python_out="$tmp" \
    "$proto_dir/$proto"
else
  echo "gen.sh: need protoc and $plugin (apt-get install protobuf-compiler protobuf-compiler-grpc)" >&2
  echo "        or the Python package grpcio-tools" >&2
  exit 1
fi

rm -rf "$out"
mkdir -p "$out"
cp "$tmp/stagetree/v1/worker_pb2.py" "$tmp/stagetree/v1/worker_pb2_grpc.py" "$out/"
# protoc writes `from stagetree.v1 import worker_pb2 as ...`: make it relative.
sed -i -E 's/^from stagetree\.v1 import worker_pb2 as /from . import worker_pb2 as /' \
  "$out/worker_pb2_grpc.py"
if grep -q '^from stagetree\.v1' "$out/worker_pb2_grpc.py" "$out/worker_pb2.py"; then
  echo "gen.sh: unexpected absolute import left in the generated code" >&2
  exit 1
fi
cat >"$out/__init__.py" <<'PY'
"""Generated from proto/stagetree/v1/worker.proto by python/gen.sh. Do not edit."""
PY
echo "gen.sh: wrote $out"
