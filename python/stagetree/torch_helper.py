"""Capture and restore a PyTorch training state, so a restored stage continues exactly.

A state is everything the next step depends on:

- the model's parameters and buffers,
- the optimizer's state (momentum buffers, Adam moments, step counts) and, if given,
  a learning-rate scheduler's,
- the random number generators: torch's CPU generator, every CUDA device's (when CUDA
  is initialised), Python's ``random`` and NumPy's global generator (when NumPy is
  imported),
- where the data loader is: a position the trainer gives (say ``{"epoch": 3,
  "batch": 17}``) and gets back on restore, plus any ``extra`` picklable value.

Every capture and restore COPIES. ``module.state_dict()`` returns tensors that share
storage with the live parameters, and ``optimizer.load_state_dict(sd)`` keeps the very
tensors of ``sd`` where device and dtype already match; a snapshot taken or restored
without copying is mutated by the next training steps, so a second child restored
from it silently starts from another state. ``capture``/``restore`` go through bytes
(``torch.save`` to a ``BytesIO``), which copies by construction; ``capture_state`` /
``restore_state`` keep a snapshot in memory and deep-copy both ways.

Typical use in a ``Trainer``::

    def save(self):
        return torch_helper.capture(self.model, self.opt, position=self.position)

    def load(self, data):
        self.position = torch_helper.restore(data, self.model, self.opt).position
"""

from __future__ import annotations

import copy
import io
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "Restored",
    "capture",
    "restore",
    "capture_state",
    "restore_state",
    "rng_state",
    "set_rng_state",
    "deterministic",
    "epoch_order",
]

FORMAT = "stagetree.torch/1"


@dataclass(frozen=True)
class Restored:
    """What ``restore`` gives back besides the state it loaded into the objects."""

    position: Any = None
    extra: Any = None


def _numpy() -> Any:
    return sys.modules.get("numpy")


def rng_state() -> dict[str, Any]:
    """Copies of the states of every random generator a training step may use."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().clone(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    np = _numpy()
    if np is not None:
        state["numpy"] = copy.deepcopy(np.random.get_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Puts every generator back to a state ``rng_state`` returned."""
    torch.set_rng_state(state["torch"].clone())
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None:
        if not torch.cuda.is_available():
            raise RuntimeError("the state holds CUDA generator states, but CUDA is not available")
        if len(cuda) != torch.cuda.device_count():
            raise RuntimeError(
                f"the state holds {len(cuda)} CUDA generator states, this process sees "
                f"{torch.cuda.device_count()} GPUs"
            )
        torch.cuda.set_rng_state_all([s.clone() for s in cuda])
    np_state = state.get("numpy")
    if np_state is not None:
        np = _numpy()
        if np is None:
            import numpy as np  # the state came from a process that used it
        np.random.set_state(copy.deepcopy(np_state))


def capture_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
    position: Any = None,
    extra: Any = None,
) -> dict[str, Any]:
    """An in-memory snapshot that no later training can change (everything copied)."""
    return {
        "format": FORMAT,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
        "scheduler": None if scheduler is None else copy.deepcopy(scheduler.state_dict()),
        "rng": rng_state(),
        "position": copy.deepcopy(position),
        "extra": copy.deepcopy(extra),
    }


def restore_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
) -> Restored:
    """Loads a snapshot into the objects, copying, so ``state`` can be restored again."""
    if state.get("format") != FORMAT:
        raise ValueError(
            f"not a stagetree torch state: format {state.get('format')!r}, expected {FORMAT!r}"
        )
    model.load_state_dict(state["model"])  # copies into the live tensors
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError("the state has no optimizer state to restore")
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError("the state has no scheduler state to restore")
        scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
    set_rng_state(state["rng"])
    return Restored(copy.deepcopy(state["position"]), copy.deepcopy(state["extra"]))


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
    position: Any = None,
    extra: Any = None,
) -> bytes:
    """The training state as bytes (``torch.save`` of ``capture_state``)."""
    buf = io.BytesIO()
    torch.save(
        capture_state(model, optimizer, scheduler=scheduler, position=position, extra=extra), buf
    )
    return buf.getvalue()


def _load(data: bytes, map_location: Any) -> Any:
    buf = io.BytesIO(data)
    try:
        # Our own bytes, with RNG tuples and optimizer hyperparameters: not weights only.
        return torch.load(buf, map_location=map_location, weights_only=False)
    except TypeError:  # pragma: no cover - torch older than 1.13
        buf.seek(0)
        return torch.load(buf, map_location=map_location)


def restore(
    data: bytes,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
    map_location: Any = None,
) -> Restored:
    """Loads bytes from ``capture`` into the objects (fresh tensors every time)."""
    return restore_state(_load(data, map_location), model, optimizer, scheduler=scheduler)


def deterministic(seed: int) -> None:
    """Seeds every generator and turns on PyTorch's deterministic algorithms, so that
    the same stage from the same state gives the same bits. Call it first in ``init``.
    (On CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts; this sets
    it to ``:4096:8`` if it is unset.)"""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    random.seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of an epoch's ``n`` examples, a function of ``(seed, epoch)`` only: a
    data loader that takes batches from it can resume at any (epoch, batch) position
    without replaying the generator."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=g)
