"""``python -m stagetree.worker --check``: load the trainer class and say, in one JSON
line, whether the worker could use it (no engine, no worker variables needed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent


def check(trainer: str, *path: Path) -> tuple[int, dict[str, Any], str]:
    """Runs --check as the engine would: STAGETREE_TRAINER and PYTHONPATH only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGETREE_")}
    dirs = [str(PYTHON_DIR), *(str(p) for p in path)]
    env.update(PYTHONPATH=os.pathsep.join(dirs), STAGETREE_TRAINER=trainer)
    proc = subprocess.run(
        [sys.executable, "-m", "stagetree.worker", "--check"],
        env=env,
        cwd=str(PYTHON_DIR),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one line on stdout, always
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.returncode, json.loads(lines[0]), proc.stderr


@pytest.fixture
def mods(tmp_path: Path) -> Path:
    (tmp_path / "good.py").write_text(
        "import stagetree\n"
        "print('noise at import')\n"  # must not break the one JSON line
        "from good_base import Base\n"
        "class Good(Base):\n"
        "    def load(self, data): pass\n"
    )
    (tmp_path / "good_base.py").write_text(
        "from stagetree import Trainer\n"
        "class Base(Trainer):\n"
        "    def init(self, params, seed): pass\n"
        "    def train(self, start, end, hp): pass\n"
        "    def evaluate(self): return {}\n"
        "    def save(self): return b''\n"
    )
    (tmp_path / "broken.py").write_text("x = 1\nraise RuntimeError('no GPU here')\n")
    (tmp_path / "needs_dep.py").write_text("import nosuch_dependency\n")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    return tmp_path


def test_good_trainer(mods: Path) -> None:
    code, out, err = check("good:Good", mods)
    assert code == 0
    assert "noise at import" in err  # what the module printed went to stderr
    # The class is defined in good.py (its base in good_base.py): good.py is the file.
    file = mods / "good.py"
    assert out == {
        "ok": True,
        "fingerprint": "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest(),
        "file": str(file.resolve()),
    }


def test_good_trainer_from_the_examples() -> None:
    code, out, _ = check("quadratic:QuadraticTrainer", PYTHON_DIR / "examples")
    file = PYTHON_DIR / "examples" / "quadratic.py"
    assert code == 0 and out["ok"] is True
    assert out["file"] == str(file)
    assert out["fingerprint"] == "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("nosuch:X", "No module named 'nosuch'"),
        ("good:Nope", "module good has no class Nope"),
        ("good_base:Base", "Base is not a trainer class (missing: load)"),
        ("trainers:Incomplete", "Incomplete is not a trainer class (missing: save, load)"),
        (
            "trainers:NotATrainer",
            "NotATrainer is not a trainer class (missing: train, evaluate, save, load)",
        ),
        ("", "STAGETREE_TRAINER: expected module:Class, got ''"),
        ("good", "STAGETREE_TRAINER: expected module:Class, got 'good'"),
    ],
)
def test_unusable_trainer(mods: Path, spec: str, error: str) -> None:
    code, out, _ = check(spec, mods, PYTHON_DIR / "tests", PYTHON_DIR / "examples")
    assert code == 1
    assert out == {"ok": False, "error": error}


def test_module_that_raises_at_import(mods: Path) -> None:
    code, out, _ = check("broken:Trainer", mods)
    assert code == 1 and out["ok"] is False
    assert out["error"] == (
        f"module broken raised RuntimeError at import: no GPU here ({mods / 'broken.py'}:2)"
    )


def test_module_with_a_missing_dependency(mods: Path) -> None:
    code, out, _ = check("needs_dep:T", mods)
    assert code == 1
    assert out["error"] == (
        "module needs_dep cannot be imported: No module named 'nosuch_dependency' "
        f"({mods / 'needs_dep.py'}:1)"
    )


def test_module_with_a_syntax_error_or_exit(mods: Path) -> None:
    code, out, _ = check("syntax:T", mods)
    assert code == 1 and out["error"].startswith("module syntax raised SyntaxError at import: ")
    assert "syntax.py" in out["error"]
    code, out, _ = check("exits:T", mods)
    assert code == 1 and out["error"].startswith("module exits raised SystemExit at import: 3")
