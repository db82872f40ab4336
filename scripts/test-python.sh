#!/usr/bin/env bash
# The Python runtime's tests (python/tests, pytest) with Debian's /usr/bin/python3.
# Without python3-grpcio they are skipped with a note, unless STAGETREE_REQUIRE_PYTHON=1
# (CI sets it after installing the Debian packages), where that is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${STAGETREE_PYTHON:-/usr/bin/python3}"
if ! "$py" -c 'import grpc, google.protobuf, pytest' 2>/dev/null; then
  if [ "${STAGETREE_REQUIRE_PYTHON:-}" = "1" ]; then
    echo "python tests: $py lacks grpcio, protobuf or pytest" >&2
    echo "  apt-get install python3-grpcio python3-protobuf python3-pytest protobuf-compiler protobuf-compiler-grpc" >&2
    exit 1
  fi
  echo "python tests: skipped ($py has no grpcio/protobuf/pytest; .ci/run installs them)"
  exit 0
fi
PYTHON="$py" bash python/gen.sh
cd python
"$py" -m pytest -q -p no:cacheprovider
