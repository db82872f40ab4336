"""Test setup: make `stagetree` (python/) and the examples importable, and make sure the
generated protobuf stubs exist (python/gen.sh writes them; they are not committed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent
TESTS_DIR = PYTHON_DIR / "tests"
EXAMPLES_DIR = PYTHON_DIR / "examples"

for p in (PYTHON_DIR, TESTS_DIR, EXAMPLES_DIR):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _ensure_stubs() -> None:
    gen = PYTHON_DIR / "stagetree" / "gen"
    proto = PYTHON_DIR.parent / "proto" / "stagetree" / "v1" / "worker.proto"
    stub = gen / "worker_pb2.py"
    if stub.exists() and stub.stat().st_mtime >= proto.stat().st_mtime:
        return
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(PYTHON_DIR / "gen.sh")], check=True, env=env)


_ensure_stubs()
