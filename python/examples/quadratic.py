"""A deterministic pure-Python trainer: SGD with momentum on a small least-squares problem.

The problem (inputs, true weights, noise) is drawn from ``seed``; the minibatch of step
``t`` is a function of ``(seed, t)`` only, and the state is the weights, the momentum
buffer and the step. So training ``[0, 10)`` then ``[10, 20)``, or saving at 10 and
loading the bytes in another process, gives bit for bit what ``[0, 20)`` gives.

Static params: ``seed`` (default 0), ``dim`` (8), ``samples`` (64), ``batch`` (16),
``noise`` (0.1), and ``stepDelayMs`` (0), a test knob: milliseconds to sleep per step,
named like the TypeScript example trainer's, which slows training down (to cancel it
mid-stage) and changes no metric. Hyperparameters (per step, from ``hp``): ``lr``
(required) and ``momentum`` (default 0).

Run it under stagetree with ``STAGETREE_TRAINER=quadratic:QuadraticTrainer`` and this
directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import random
import struct
import time
from typing import Any, Mapping

from stagetree import Hp, Trainer

_MAGIC = b"QUAD1"


class QuadraticTrainer(Trainer):
    def init(self, params: Mapping[str, Any], seed: int) -> None:
        self.dim = int(params.get("dim", 8))
        self.samples = int(params.get("samples", 64))
        self.batch = min(int(params.get("batch", 16)), self.samples)
        noise = float(params.get("noise", 0.1))
        self.step_delay = max(0.0, float(params.get("stepDelayMs", 0))) / 1000.0
        self.seed = seed
        rng = random.Random(seed)
        w_true = [rng.gauss(0.0, 1.0) for _ in range(self.dim)]
        self.x = [[rng.gauss(0.0, 1.0) for _ in range(self.dim)] for _ in range(self.samples)]
        self.y = [_dot(row, w_true) + noise * rng.gauss(0.0, 1.0) for row in self.x]
        self.w = [0.0] * self.dim
        self.v = [0.0] * self.dim
        self.step = 0

    def _batch(self, t: int) -> list[int]:
        # A function of (seed, t) only: independent of how the steps are split.
        return random.Random(f"{self.seed}:{t}").sample(range(self.samples), self.batch)

    def train(self, start: int, end: int, hp: Hp) -> None:
        if start != self.step:
            raise RuntimeError(f"asked to train from step {start}, the state is at {self.step}")
        for t in range(start, end):
            h = hp(t)  # raises Cancelled when the engine cancelled the task
            if self.step_delay > 0:
                time.sleep(self.step_delay)
            lr = float(h["lr"])
            momentum = float(h.get("momentum", 0.0))
            grad = [0.0] * self.dim
            for i in self._batch(t):
                row = self.x[i]
                err = _dot(row, self.w) - self.y[i]
                for k in range(self.dim):
                    grad[k] += err * row[k] / self.batch
            for k in range(self.dim):
                self.v[k] = momentum * self.v[k] + grad[k]
                self.w[k] -= lr * self.v[k]
            self.step = t + 1

    def evaluate(self) -> dict[str, float]:
        loss = sum((_dot(row, self.w) - y) ** 2 for row, y in zip(self.x, self.y))
        return {"loss": loss / self.samples, "step": float(self.step)}

    def save(self) -> bytes:
        # Packed doubles: exact, and a fresh copy by construction.
        return _MAGIC + struct.pack(f"<qq{2 * self.dim}d", self.step, self.dim, *self.w, *self.v)

    def load(self, data: bytes) -> None:
        if data[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a QuadraticTrainer state")
        step, dim = struct.unpack_from("<qq", data, len(_MAGIC))
        if dim != self.dim:
            raise ValueError(f"state has dim {dim}, the trainer was initialised with {self.dim}")
        values = struct.unpack_from(f"<{2 * dim}d", data, len(_MAGIC) + 16)
        self.step = step
        self.w = list(values[:dim])
        self.v = list(values[dim:])


def _dot(a: list[float], b: list[float]) -> float:
    s = 0.0
    for p, q in zip(a, b):
        s += p * q
    return s
