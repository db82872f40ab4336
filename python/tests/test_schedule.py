"""Schedule evaluation against golden values computed by the TypeScript implementation
(tests/make_golden.sh writes golden_schedules.json from src/schedule)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from stagetree._jsmath import js_cos, js_pow
from stagetree.gen import worker_pb2
from stagetree.schedule import Hp, Schedule, ScheduleError, round_value, schedules_from_proto

GOLDEN = json.loads((Path(__file__).parent / "golden_schedules.json").read_text())
NAMES = sorted(GOLDEN["schedules"])


def bits(v: object) -> object:
    """Exact identity of a value: a string, or the 64 bits of a double."""
    if isinstance(v, str):
        return v
    return struct.pack("<d", float(v)).hex()


def expected(v: object) -> object:
    if isinstance(v, dict):
        return float(v["nonFinite"])
    return v


def test_golden_covers_every_piece_kind() -> None:
    kinds = {
        s["piece"]["f"]
        for case in GOLDEN["schedules"].values()
        for s in case["canonical"]["segments"]
    }
    assert kinds == {"const", "stair", "exp", "cos", "lin", "tri"}
    assert len(NAMES) >= 12


@pytest.mark.parametrize("name", NAMES)
def test_values_match_typescript_bit_for_bit(name: str) -> None:
    case = GOLDEN["schedules"][name]
    c = Schedule.from_json(case["canonical"])
    assert c.hash == case["canonical"]["hash"]
    got = [c.value_at(t) for t in GOLDEN["steps"]]
    want = [expected(v) for v in case["values"]]
    mismatches = [(t, g, w) for t, g, w in zip(GOLDEN["steps"], got, want) if bits(g) != bits(w)]
    assert mismatches == []


@pytest.mark.parametrize("name", NAMES)
def test_proto_round_trip_evaluates_the_same(name: str) -> None:
    case = GOLDEN["schedules"][name]
    c = Schedule.from_json(case["canonical"])
    msg = c.to_proto(worker_pb2.Schedule)
    wire = worker_pb2.Schedule.FromString(msg.SerializeToString())
    back = Schedule.from_proto(wire)
    assert back.segments == c.segments
    for t in GOLDEN["steps"]:
        assert bits(back.value_at(t)) == bits(c.value_at(t))


def test_rounding_matches_javascript_to_precision_12() -> None:
    bad = [
        (x, round_value(x), want)
        for x, want in GOLDEN["rounding"]
        if bits(round_value(x)) != bits(want)
    ]
    assert bad == []


def test_rounding_rules() -> None:
    assert round_value(100000000000.5) == 100000000001.0  # a tie goes away from zero
    assert round_value(-100000000000.5) == -100000000001.0
    assert bits(round_value(-0.0)) == bits(0.0)  # minus zero becomes zero
    assert round_value(0.1 + 0.2) == 0.3
    assert round_value("adam") == "adam"
    assert math.isinf(round_value(float("inf")))


def test_js_math_special_cases() -> None:
    assert js_pow(2.0, 10.0) == 1024.0
    assert js_pow(0.5, -3.0) == 8.0
    assert js_pow(-2.0, 3.0) == -8.0
    assert js_pow(1.5, 5000.0) == math.inf  # no OverflowError
    assert js_pow(0.0, -1.0) == math.inf  # no ZeroDivisionError
    assert math.isnan(js_pow(1.0, math.inf))  # JavaScript, unlike C
    assert math.isnan(js_pow(-2.0, 0.5))
    assert js_cos(0.0) == 1.0
    assert js_cos(math.pi) == -1.0


def test_hp_gives_every_value_at_a_step() -> None:
    lr = Schedule.from_json(GOLDEN["schedules"]["step"]["canonical"])
    opt = Schedule.from_json(GOLDEN["schedules"]["piecewiseText"]["canonical"])
    hp = Hp({"lr": lr, "optimizer": opt}, start=0, end=20)
    assert hp(0) == {"lr": 0.1, "optimizer": "sgd"}
    assert hp(7) == {"lr": 0.05, "optimizer": "adam"}
    assert hp(17)["optimizer"] == "sgd"
    hp(7)["lr"] = 123.0  # callers get a copy
    assert hp(7)["lr"] == 0.05
    with pytest.raises(ValueError):
        hp(-1)
    with pytest.raises(TypeError):
        hp(1.5)


def test_hp_check_runs_on_every_call() -> None:
    calls = []
    hp = Hp({}, check=lambda: calls.append(1))
    hp(0)
    hp(0)
    assert len(calls) == 2


def test_schedules_from_proto_names_the_bad_field() -> None:
    msg = worker_pb2.Schedule()
    seg = msg.segments.add(start=0)
    seg.piece.stair.init = 0.1
    seg.piece.stair.factor = 0.5
    seg.piece.stair.every = 0
    with pytest.raises(
        ScheduleError, match=r"schedules\['lr'\]\.segments\[0\]\.piece\.stair\.every"
    ):
        schedules_from_proto({"lr": msg})


def test_malformed_segments_are_rejected() -> None:
    const = {"f": "const", "v": 1}
    with pytest.raises(ScheduleError, match="expected 0"):
        Schedule.from_json({"segments": [{"start": 1, "end": None, "piece": const}]})
    with pytest.raises(ScheduleError, match="contiguous"):
        Schedule.from_json(
            {
                "segments": [
                    {"start": 0, "end": 5, "piece": const},
                    {"start": 6, "end": None, "piece": const},
                ]
            }
        )
    with pytest.raises(ScheduleError, match="must be open"):
        Schedule.from_json({"segments": [{"start": 0, "end": 5, "piece": const}]})
    with pytest.raises(ScheduleError, match="expected one of"):
        Schedule.from_json({"segments": [{"start": 0, "end": None, "piece": {"f": "sin"}}]})


def _f(h: str) -> float:
    return struct.unpack(">d", bytes.fromhex(h))[0]


def test_js_pow_matches_v8_bit_for_bit() -> None:
    cases = GOLDEN["jsmath"]["pow"]
    bad = [(b, n) for b, n, r in cases if struct.pack(">d", js_pow(_f(b), _f(n))).hex() != r]
    assert bad == []


def test_js_cos_matches_v8_bit_for_bit() -> None:
    cases = GOLDEN["jsmath"]["cos"]
    bad = [x for x, r in cases if struct.pack(">d", js_cos(_f(x))).hex() != r]
    assert bad == []
