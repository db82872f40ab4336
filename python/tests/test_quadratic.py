"""The example trainer is deterministic: split runs and save/load equal one run, bit for bit."""

from __future__ import annotations

import struct
import time

from quadratic import QuadraticTrainer

from stagetree.schedule import Hp, Schedule

PARAMS = {"seed": 7, "dim": 6, "samples": 40, "batch": 5}


def schedules() -> dict[str, Schedule]:
    lr = Schedule.from_json(
        {
            "segments": [
                {
                    "start": 0,
                    "end": None,
                    "piece": {"f": "exp", "init": 0.05, "gamma": 0.97, "origin": 0},
                }
            ]
        }
    )
    momentum = Schedule.from_json(
        {"segments": [{"start": 0, "end": None, "piece": {"f": "const", "v": 0.9}}]}
    )
    return {"lr": lr, "momentum": momentum}


def run(ranges: list[tuple[int, int]]) -> QuadraticTrainer:
    tr = QuadraticTrainer()
    tr.init(PARAMS, PARAMS["seed"])
    for a, b in ranges:
        tr.train(a, b, Hp(schedules(), a, b))
    return tr


def exact(metrics: dict[str, float]) -> dict[str, str]:
    return {k: struct.pack("<d", v).hex() for k, v in metrics.items()}


def test_split_runs_equal_one_run_bit_for_bit() -> None:
    whole = run([(0, 20)])
    split = run([(0, 10), (10, 20)])
    assert exact(split.evaluate()) == exact(whole.evaluate())
    assert split.save() == whole.save()
    assert whole.evaluate()["loss"] < run([(0, 0)]).evaluate()["loss"]  # it learns


def test_save_load_continues_exactly() -> None:
    whole = run([(0, 20)])
    first = run([(0, 10)])
    data = first.save()
    first.train(10, 12, Hp(schedules(), 10, 12))  # later training must not touch `data`
    other = QuadraticTrainer()
    other.init(PARAMS, PARAMS["seed"])
    other.load(data)
    other.train(10, 20, Hp(schedules(), 10, 20))
    assert exact(other.evaluate()) == exact(whole.evaluate())


def test_seed_changes_the_problem() -> None:
    a = run([(0, 5)]).evaluate()
    tr = QuadraticTrainer()
    tr.init({**PARAMS, "seed": 8}, 8)
    tr.train(0, 5, Hp(schedules(), 0, 5))
    assert tr.evaluate()["loss"] != a["loss"]


def test_step_delay_slows_down_and_changes_no_metric() -> None:
    slow = QuadraticTrainer()
    params = {**PARAMS, "stepDelayMs": 20}
    slow.init(params, params["seed"])
    t0 = time.monotonic()
    slow.train(0, 5, Hp(schedules(), 0, 5))
    assert time.monotonic() - t0 >= 0.09  # five steps of 20 ms
    fast = run([(0, 5)])
    assert exact(slow.evaluate()) == exact(fast.evaluate())
    assert slow.save() == fast.save()  # the knob is not part of the state
