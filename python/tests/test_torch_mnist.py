"""The Fashion-MNIST example resumes exactly: [0, 12) + save/load + [12, 20) equals
[0, 20). Skipped without torch or the data (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch_mnist import DEFAULT_DATA_DIR, FashionMnistTrainer  # noqa: E402

from stagetree.schedule import Hp, Schedule  # noqa: E402

DATA = Path(os.environ.get("STAGETREE_FASHION_MNIST") or DEFAULT_DATA_DIR)
pytestmark = pytest.mark.skipif(
    not any(DATA.glob("train-images-idx3-ubyte*")), reason=f"no Fashion-MNIST in {DATA}"
)

PARAMS = {"seed": 4, "train_size": 256, "test_size": 200, "batch": 32, "width": 4, "device": "cpu"}


def hp(start: int, end: int) -> Hp:
    lr = Schedule.from_json(
        {
            "segments": [
                {
                    "start": 0,
                    "end": None,
                    "piece": {"f": "stair", "init": 0.1, "factor": 0.5, "every": 7, "origin": 0},
                }
            ]
        }
    )
    return Hp({"lr": lr}, start, end)


def fresh() -> FashionMnistTrainer:
    tr = FashionMnistTrainer()
    tr.init(PARAMS, PARAMS["seed"])
    return tr


def exact(m: dict[str, float]) -> dict[str, str]:
    return {k: struct.pack("<d", v).hex() for k, v in m.items()}


def test_resume_from_bytes_is_exact() -> None:
    whole = fresh()
    whole.train(0, 20, hp(0, 20))  # crosses an epoch boundary (8 steps per epoch)
    want = exact(whole.evaluate())
    want_params = [p.detach().clone() for p in whole.model.parameters()]

    first = fresh()
    first.train(0, 12, hp(0, 12))
    data = first.save()
    first.train(12, 15, hp(12, 15))  # must not affect `data`

    second = fresh()  # another process: init with the same params, then load
    second.load(data)
    assert second.position == {"epoch": 1, "batch": 4}
    second.train(12, 20, hp(12, 20))
    assert exact(second.evaluate()) == want
    assert all(torch.equal(a, b) for a, b in zip(second.model.parameters(), want_params))


def test_it_learns() -> None:
    tr = fresh()
    before = tr.evaluate()["accuracy"]
    tr.train(0, 24, hp(0, 24))
    assert tr.evaluate()["accuracy"] > before


def test_worker_runs_the_torch_trainer_and_restores_siblings(tmp_path: Path) -> None:
    """Through the real worker: one child continues in memory, its sibling loads the
    fork point's checkpoint; each equals training alone from scratch."""
    from fake_engine import FakeEngine, run_task, stage_run, start_worker, worker_env

    from stagetree.gen import worker_pb2 as pb

    def lr(init: float) -> pb.Schedule:
        piece = pb.Piece(stair=pb.Stair(init=init, factor=0.5, every=7, origin=0))
        return pb.Schedule(segments=[pb.Segment(start=0, piece=piece)])

    def alone(schedule_init: float) -> dict[str, str]:
        tr = fresh()
        s = {"lr": Schedule.from_proto(lr(0.1))}
        tr.train(0, 10, Hp(s, 0, 10))
        s = {"lr": Schedule.from_proto(lr(schedule_init))}
        tr.train(10, 16, Hp(s, 10, 16))
        return exact(tr.evaluate())

    engine = FakeEngine()
    proc = start_worker(
        worker_env(engine.address, STAGETREE_TRAINER="torch_mnist:FashionMnistTrainer")
    )
    try:
        engine.expect("register")
        engine.send(welcome=pb.Welcome(checkpoint_dir=str(tmp_path), heartbeat_seconds=0.2))
        engine.send(
            run=run_task(
                1, [stage_run("P", 0, 10, PARAMS, {"lr": lr(0.1)})], init=True, save_after="Kfork"
            )
        )
        engine.expect("progress")
        engine.expect("done")
        children = {}
        for task_id, init, restore in (
            (2, 0.1, {"memory": "Kfork"}),
            (3, 0.3, {"checkpoint": "Kfork"}),
        ):
            engine.send(
                run=run_task(
                    task_id, [stage_run(f"C{task_id}", 10, 16, PARAMS, {"lr": lr(init)})], **restore
                )
            )
            engine.expect("progress")
            children[init] = exact(engine.expect("done").metrics)
        engine.send(shutdown=pb.Shutdown(reason="done"))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        engine.stop()
    # Metrics come back as doubles; evaluate()'s "step" and the rest compare exactly.
    assert children[0.1] == alone(0.1)
    assert children[0.3] == alone(0.3)
    assert children[0.1] != children[0.3]
