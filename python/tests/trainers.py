"""Trainers the worker tests run (imported by the worker process from PYTHONPATH)."""

from __future__ import annotations

import time
from typing import Any, Mapping

from quadratic import QuadraticTrainer

from stagetree import Hp


class TestTrainer(QuadraticTrainer):
    """The quadratic trainer, plus params ``fail_at`` (raise at that step) and ``sleep``
    (seconds per step, to have time to cancel)."""

    __test__ = False  # not a pytest class

    def init(self, params: Mapping[str, Any], seed: int) -> None:
        super().init(params, seed)
        self.fail_at = params.get("fail_at")
        self.sleep = float(params.get("sleep", 0.0))

    def train(self, start: int, end: int, hp: Hp) -> None:
        for t in range(start, end):
            if self.fail_at is not None and t == self.fail_at:
                raise ValueError(f"boom at step {t}")
            if self.sleep:
                time.sleep(self.sleep)
            super().train(t, t + 1, hp)


class Unconstructible(QuadraticTrainer):
    def __init__(self) -> None:
        raise RuntimeError("no GPU here")
