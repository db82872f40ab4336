"""The trainer API: what a user implements to train under stagetree.

A worker process holds ONE trainer instance for its whole life and reuses it across
tasks (and trials): starting a process that imports PyTorch and initialises CUDA costs
seconds, so the runtime calls ``init`` again for a fresh trial instead of starting a new
process. Keep expensive, trial-independent things (a loaded data set) in the instance or
at module level, and rebuild everything trial-dependent (model, optimizer, RNG seeds) in
``init``.
"""

from __future__ import annotations

from typing import Any, Mapping

from .schedule import Hp

__all__ = ["Trainer", "Cancelled"]


class Cancelled(BaseException):
    """Raised inside ``hp(step)`` (or between stage runs) when the engine cancelled the
    running task or is shutting the worker down. It derives from ``BaseException`` so
    that a trainer's ``except Exception`` does not swallow it: let it propagate. The
    runtime then drops the trainer's state (``init`` or ``load`` comes next)."""


class Trainer:
    """Subclass this and implement the five methods.

    The runtime drives an instance like this::

        init(params, seed)           # fresh state at step 0 (restore = init)
        load(data)                   # or: a saved state (restore = checkpoint)
        train(0, 10, hp)             # steps [0, 10) with hp(step) -> {name: value}
        train(10, 25, hp)            # continues where it stopped (same process, no reload)
        data = save()                # when the engine wants the state kept
        metrics = evaluate()         # at the end of every task

    **Determinism.** Stages are shared between trials: the state after ``train(0, 10)``
    then ``train(10, 20)`` must be exactly what ``train(0, 20)`` gives, and
    ``load(save())`` must continue exactly as the saved instance would have. So derive
    every random choice from ``seed`` and the step (or save the RNG states), take
    hyperparameters only from ``hp(step)`` for steps in ``[start, end)``, and keep
    data-loader positions in the saved state. ``stagetree.torch_helper`` does this for
    PyTorch.

    **save/load must copy.** ``save()`` must return bytes that no later training can
    change, and ``load(data)`` must build state that does not share memory with
    anything another ``load`` of the same bytes would get. With PyTorch the trap is
    real: ``module.state_dict()`` returns tensors that share storage with the live
    parameters, and ``optimizer.load_state_dict(sd)`` keeps the very tensors of ``sd``
    where device and dtype already match. An in-memory snapshot taken or restored
    without copying is silently mutated by the next steps, and a sibling restored from
    it later starts from corrupted momentum buffers. Serialising to bytes
    (``torch.save`` to a ``BytesIO``) and deserialising fresh tensors on every
    ``load`` is safe; ``torch_helper.capture``/``restore`` do that.

    ``load`` is always called on an instance that ``init`` has prepared with the same
    ``params`` (the runtime calls ``init`` first when needed), so it only has to
    overwrite state, not build the model.
    """

    def init(self, params: Mapping[str, Any], seed: int) -> None:
        """Fresh state at step 0 for these static params (model, dataset, seed, ...)."""
        raise NotImplementedError(f"{type(self).__name__}.init(params, seed)")

    def train(self, start: int, end: int, hp: Hp) -> None:
        """Train steps ``start`` to ``end - 1``; ``hp(step)`` gives step's values."""
        raise NotImplementedError(f"{type(self).__name__}.train(start, end, hp)")

    def evaluate(self) -> Mapping[str, float]:
        """Metrics of the current state, by name (the study picks its metric by name)."""
        raise NotImplementedError(f"{type(self).__name__}.evaluate()")

    def save(self) -> bytes:
        """The current state as bytes (a copy: see the class notes)."""
        raise NotImplementedError(f"{type(self).__name__}.save()")

    def load(self, data: bytes) -> None:
        """Replace the current state by one ``save()`` returned (copying: see above)."""
        raise NotImplementedError(f"{type(self).__name__}.load(data)")
