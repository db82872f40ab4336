"""Trainers the worker tests run (imported by the worker process from PYTHONPATH)."""

from __future__ import annotations

import errno
import os
import time
from typing import Any, Mapping

from quadratic import QuadraticTrainer

from stagetree import Hp, Trainer

_real_fsync = os.fsync


class TestTrainer(QuadraticTrainer):
    """The quadratic trainer, plus params that misbehave on purpose:

    - ``fail_at``: raise ValueError at that step; ``huge_error``: raise one whose
      message has that many characters;
    - ``sleep``: seconds per step (to have time to cancel); ``block``: seconds that
      train() sleeps before its first step, without calling hp (a long C call);
      ``init_sleep``, ``load_sleep``, ``save_sleep``, ``evaluate_sleep``: seconds
      those methods take;
    - ``print``: text train() writes to stdout without a newline, unflushed;
      ``print_c``: text it writes with the C library's printf (buffered by libc);
    - ``metrics``: evaluate() returns that many extra metrics with long names;
      ``nonfinite``: evaluate() adds NaN and +/-infinity;
    - ``disk_full``: writing a checkpoint fails with ENOSPC (os.fsync raises);
    - ``env_probe``: evaluate() says whether STAGETREE_WORKER_SECRET is visible.
    """

    __test__ = False  # not a pytest class

    def init(self, params: Mapping[str, Any], seed: int) -> None:
        time.sleep(float(params.get("init_sleep", 0.0)))
        super().init(params, seed)
        self.params = dict(params)
        self.fail_at = params.get("fail_at")
        self.sleep = float(params.get("sleep", 0.0))
        if params.get("disk_full"):

            def full(fd: int) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            os.fsync = full
        else:
            os.fsync = _real_fsync

    def train(self, start: int, end: int, hp: Hp) -> None:
        p = self.params
        if p.get("print"):
            print(p["print"], end="")
        if p.get("print_c"):
            import ctypes

            ctypes.CDLL(None).printf(p["print_c"].encode())
        if p.get("block"):
            time.sleep(float(p["block"]))
        for t in range(start, end):
            if self.fail_at is not None and t == self.fail_at:
                raise ValueError(f"boom at step {t}")
            if p.get("huge_error"):
                raise RuntimeError("x" * int(p["huge_error"]))
            if self.sleep:
                time.sleep(self.sleep)
            super().train(t, t + 1, hp)

    def evaluate(self) -> dict[str, float]:
        p = self.params
        time.sleep(float(p.get("evaluate_sleep", 0.0)))
        out = super().evaluate()
        for i in range(int(p.get("metrics", 0))):
            out[f"metric_{i:06d}_" + "n" * 50] = float(i)
        if p.get("nonfinite"):
            out.update(nan=float("nan"), up=float("inf"), down=float("-inf"))
        if p.get("env_probe"):
            out["secret_visible"] = float("STAGETREE_WORKER_SECRET" in os.environ)
        return out

    def save(self) -> bytes:
        time.sleep(float(self.params.get("save_sleep", 0.0)))
        return super().save()

    def load(self, data: bytes) -> None:
        time.sleep(float(self.params.get("load_sleep", 0.0)))
        super().load(data)


class Unconstructible(QuadraticTrainer):
    def __init__(self) -> None:
        raise RuntimeError("no GPU here")


class Incomplete(Trainer):
    """Overrides only some of the five methods (the rest are the base class's, which
    raise NotImplementedError)."""

    def init(self, params: Mapping[str, Any], seed: int) -> None:
        pass

    def train(self, start: int, end: int, hp: Hp) -> None:
        pass

    def evaluate(self) -> dict[str, float]:
        return {}


class NotATrainer:
    def init(self, params: Mapping[str, Any], seed: int) -> None:
        pass
