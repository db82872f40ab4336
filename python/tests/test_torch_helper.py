"""PyTorch snapshots: restoring two children from one snapshot gives exactly what running
each from scratch gives (DESIGN.md's trap: aliasing snapshots corrupt the second child).
Skipped where torch is not installed."""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")

from stagetree import torch_helper  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16)
        self.bn = torch.nn.BatchNorm1d(16)  # buffers (running stats) change in training
        self.drop = torch.nn.Dropout(0.3)  # uses torch's generator every step
        self.fc2 = torch.nn.Linear(16, 1)

    def forward(self, x: Any) -> Any:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


DATA_X = torch.linspace(-1, 1, 64 * 6).reshape(64, 6)
DATA_Y = DATA_X.sum(dim=1, keepdim=True).sin()


class Run:
    """A tiny training setup: model, optimizer, a position, RNG use of every kind."""

    def __init__(self, opt: str = "sgd") -> None:
        torch_helper.deterministic(11)
        self.model = Net()
        if opt == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.position = {"epoch": 0, "batch": 0}

    def train(self, steps: int, lr: float) -> None:
        self.model.train()
        for _ in range(steps):
            for g in self.opt.param_groups:
                g["lr"] = lr
            order = torch_helper.epoch_order(64, 11, self.position["epoch"])
            idx = order[self.position["batch"] * 16 : (self.position["batch"] + 1) * 16]
            noise = torch.randn(16, 1) * 0.01 + random.random() * 0.001  # torch + python RNG
            loss = ((self.model(DATA_X[idx]) - DATA_Y[idx] - noise) ** 2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.position["batch"] += 1
            if self.position["batch"] == 4:
                self.position = {"epoch": self.position["epoch"] + 1, "batch": 0}

    def fingerprint(self) -> list[Any]:
        """The model, optimizer and generator states now (the generators are global)."""
        out = [t.clone() for t in self.model.state_dict().values()]
        for state in self.opt.state_dict()["state"].values():
            out.extend(v.clone() for v in state.values() if torch.is_tensor(v))
        out.append(torch.get_rng_state().clone())
        out.append(torch.tensor(random.random()))  # python generator position
        return out


def same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def scratch(opt: str, lr_child: float) -> list[Any]:
    r = Run(opt)
    r.train(6, 0.1)
    r.train(5, lr_child)
    return r.fingerprint()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_two_children_from_one_byte_snapshot_equal_scratch(opt: str) -> None:
    parent = Run(opt)
    parent.train(6, 0.1)
    snap = torch_helper.capture(parent.model, parent.opt, position=parent.position)

    children = []
    for lr in (0.05, 0.2):
        child = Run(opt)  # a fresh process would init first, then load
        child.position = torch_helper.restore(snap, child.model, child.opt).position
        assert child.position == {"epoch": 1, "batch": 2}
        child.train(5, lr)
        children.append(child.fingerprint())

    assert same(children[0], scratch(opt, 0.05))
    assert same(children[1], scratch(opt, 0.2))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_two_children_from_one_memory_snapshot_continuing_in_place(opt: str) -> None:
    # One worker: the parent's live objects continue as child 1 (hot), child 2 restores
    # the in-memory snapshot into the same objects afterwards.
    run = Run(opt)
    run.train(6, 0.1)
    snap = torch_helper.capture_state(run.model, run.opt, position=run.position)
    run.train(5, 0.05)
    first = run.fingerprint()
    run.position = torch_helper.restore_state(snap, run.model, run.opt).position
    run.train(5, 0.2)
    second = run.fingerprint()
    # and a third time, in case the second restore handed out the snapshot's tensors
    run.position = torch_helper.restore_state(snap, run.model, run.opt).position
    run.train(5, 0.2)
    third = run.fingerprint()  # before scratch() reseeds the global generators
    assert same(first, scratch(opt, 0.05))
    assert same(second, scratch(opt, 0.2))
    assert same(third, scratch(opt, 0.2))


def test_the_trap_a_naive_snapshot_corrupts_the_second_child() -> None:
    run = Run("sgd")
    run.train(6, 0.1)
    naive: dict[str, Any] = {"model": run.model.state_dict(), "opt": run.opt.state_dict()}
    run.train(5, 0.05)  # child 1 continues in place: mutates what `naive` points at
    run.model.load_state_dict(naive["model"])
    run.opt.load_state_dict(naive["opt"])
    run.position = {"epoch": 1, "batch": 2}
    run.train(5, 0.2)
    assert not same(run.fingerprint()[:-2], scratch("sgd", 0.2)[:-2])


def test_rng_state_round_trip_covers_numpy_when_imported() -> None:
    np = pytest.importorskip("numpy")
    torch_helper.deterministic(5)
    state = torch_helper.rng_state()
    draws: Callable[[], tuple[Any, ...]] = lambda: (
        torch.rand(3).tolist(),
        random.random(),
        np.random.rand(2).tolist(),
    )
    a = draws()
    torch_helper.set_rng_state(state)
    assert draws() == a


def test_restore_rejects_foreign_bytes() -> None:
    import io

    buf = io.BytesIO()
    torch.save({"hello": 1}, buf)
    with pytest.raises(ValueError, match="not a stagetree torch state"):
        torch_helper.restore(buf.getvalue(), Net())
