"""Canonical schedules: what a trainer evaluates per step.

A mirror of ``src/schedule/canonical.ts`` (``rawPieceAt``, ``pieceAt``, ``valueAt``,
``segmentIndex``) and ``src/schedule/evaluate.ts`` (``roundValue``, ``cosineAt``,
``triangleAt``). The value used while training step ``t`` is the piece of the segment
containing ``t``, evaluated at ``t`` and rounded to 12 significant digits, exactly as
the engine computes it when it builds the stage tree:

- the formulas are evaluated in the same order of operations, with JavaScript's ``**``
  and ``Math.cos`` (``_jsmath``: the C library's differ in the last bit);
- rounding is ``Number(x.toPrecision(12))``: round half away from zero on the exact
  binary value, then the nearest double (``decimal`` does both exactly); minus zero
  becomes zero.

Schedules arrive as ``stagetree.v1.Schedule`` messages (``from_proto``) or as the
engine's JSON canonical form (``from_json``: ``{"segments": [{"start", "end", "piece":
{"f": "const" | "stair" | "exp" | "cos" | "lin" | "tri", ...}}], "hash"}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Callable, Mapping, Union

from ._jsmath import js_cos, js_pow

__all__ = [
    "SIGNIFICANT_DIGITS",
    "Value",
    "Piece",
    "Segment",
    "Schedule",
    "ScheduleError",
    "Hp",
    "round_value",
    "raw_piece_at",
    "piece_at",
    "segment_index",
    "value_at",
    "schedules_from_proto",
]

#: Significant digits at which numeric hyperparameter values are compared and used.
SIGNIFICANT_DIGITS = 12

#: A hyperparameter value: a number (learning rate, momentum) or a string (optimizer).
Value = Union[float, str]

_ROUND = Context(prec=SIGNIFICANT_DIGITS, rounding=ROUND_HALF_UP)

PIECE_KINDS = ("const", "stair", "exp", "cos", "lin", "tri")


class ScheduleError(ValueError):
    """A schedule message or JSON form that is not a valid canonical schedule."""


def round_value(v: Value) -> Value:
    """Rounds a number to 12 significant digits as JavaScript's
    ``Number(v.toPrecision(12))`` does (strings are returned as they are; minus zero
    becomes zero)."""
    if isinstance(v, str):
        return v
    v = float(v)
    if v == 0.0:
        return 0.0
    if math.isnan(v) or math.isinf(v):
        return v
    return float(_ROUND.plus(Decimal(v)))


@dataclass(frozen=True)
class Piece:
    """A closed-form piece. ``f`` is its kind; the other fields are used by the kinds
    that have them (see ``canonical.ts``):

    - ``const``: ``v``
    - ``stair``: ``init * factor ** floor((t - origin) / every)``
    - ``exp``: ``init * gamma ** (t - origin)``
    - ``cos``: ``min + (max - min) * (1 + cos(pi * min(u, period) / period)) / 2``,
      ``u = t - origin``
    - ``lin``: ``from_ + (to - from_) * (t - origin) / w``
    - ``tri``: ``p = (t - origin) mod 2h``; ``low + (high - low) * (p < h ? p / h :
      (2h - p) / h)``
    """

    f: str
    v: Value = 0.0
    init: float = 0.0
    factor: float = 0.0
    every: int = 1
    gamma: float = 0.0
    max: float = 0.0
    min: float = 0.0
    period: int = 1
    from_: float = 0.0
    to: float = 0.0
    w: int = 1
    low: float = 0.0
    high: float = 0.0
    h: int = 1
    origin: int = 0


@dataclass(frozen=True)
class Segment:
    start: int
    #: Exclusive; ``None``: the segment never ends.
    end: int | None
    piece: Piece


def raw_piece_at(p: Piece, t: int) -> Value:
    """The unrounded value of a piece at step t (``rawPieceAt``)."""
    f = p.f
    if f == "const":
        return p.v
    if f == "stair":
        return p.init * js_pow(p.factor, float(math.floor((t - p.origin) / p.every)))
    if f == "exp":
        return p.init * js_pow(p.gamma, float(t - p.origin))
    if f == "cos":
        u = t - p.origin
        return p.min + ((p.max - p.min) * (1 + js_cos((math.pi * min(u, p.period)) / p.period))) / 2
    if f == "lin":
        return p.from_ + ((p.to - p.from_) * (t - p.origin)) / p.w
    if f == "tri":
        q = (t - p.origin) % (2 * p.h)
        return p.low + (p.high - p.low) * (q / p.h if q < p.h else (2 * p.h - q) / p.h)
    raise ScheduleError(f"unknown piece kind {f!r}")


def piece_at(p: Piece, t: int) -> Value:
    """The value used while training step t under this piece (``pieceAt``)."""
    return round_value(raw_piece_at(p, t))


def segment_index(segments: tuple[Segment, ...] | list[Segment], t: int) -> int:
    """Index of the segment containing step t (segments are contiguous from 0)."""
    lo = 0
    hi = len(segments) - 1
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if segments[mid].start <= t:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Schedule:
    """A canonical schedule: contiguous segments covering ``[0, inf)``."""

    __slots__ = ("segments", "hash")

    def __init__(self, segments: list[Segment] | tuple[Segment, ...], hash: str = "") -> None:
        segs = tuple(segments)
        _check_segments(segs)
        self.segments: tuple[Segment, ...] = segs
        self.hash = hash

    def value_at(self, t: int) -> Value:
        """The value used while training step t (``valueAt``)."""
        if t < 0:
            raise ValueError(f"step must be >= 0, got {t}")
        return piece_at(self.segments[segment_index(self.segments, t)].piece, t)

    __call__ = value_at

    def __repr__(self) -> str:
        return f"Schedule(segments={list(self.segments)!r}, hash={self.hash!r})"

    # ------------------------------------------------------------------ conversions

    @classmethod
    def from_proto(cls, msg: Any) -> "Schedule":
        """From a ``stagetree.v1.Schedule`` message."""
        segments = []
        for k, s in enumerate(msg.segments):
            where = f"segments[{k}]"
            end = int(s.end) if s.HasField("end") else None
            segments.append(Segment(int(s.start), end, _piece_from_proto(s.piece, where)))
        return cls(segments, msg.hash)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Schedule":
        """From the engine's JSON canonical form (``Canonical`` in canonical.ts)."""
        raw = obj.get("segments")
        if not isinstance(raw, list):
            raise ScheduleError(f"schedule.segments: expected a list, got {type(raw).__name__}")
        segments = []
        for k, s in enumerate(raw):
            where = f"segments[{k}]"
            end = s.get("end")
            segments.append(
                Segment(
                    _int(s.get("start"), f"{where}.start"),
                    None if end is None else _int(end, f"{where}.end"),
                    _piece_from_json(s.get("piece"), f"{where}.piece"),
                )
            )
        return cls(segments, str(obj.get("hash", "")))

    def to_proto(self, msg_cls: Any) -> Any:
        """To a ``stagetree.v1.Schedule`` message (``msg_cls`` is its class)."""
        msg = msg_cls(hash=self.hash)
        for s in self.segments:
            seg = msg.segments.add(start=s.start)
            if s.end is not None:
                seg.end = s.end
            _piece_to_proto(s.piece, seg.piece)
        return msg


def value_at(c: Schedule, t: int) -> Value:
    """The value used while training step t."""
    return c.value_at(t)


def schedules_from_proto(schedules: Mapping[str, Any]) -> dict[str, Schedule]:
    """A StageRun's ``schedules`` map as ``Schedule`` objects."""
    out = {}
    for name, msg in schedules.items():
        try:
            out[name] = Schedule.from_proto(msg)
        except ScheduleError as e:
            raise ScheduleError(f"schedules[{name!r}].{e}") from None
    return out


class Hp:
    """``hp(step)``: the hyperparameter values of one stage run at a step, as
    ``{name: value}``. ``start`` and ``end`` are the run's range; a trainer should only
    ask for steps in ``[start, end)`` (other steps evaluate the same schedules, but the
    stage tree guarantees nothing about them). ``check`` is called on every call: the
    worker uses it to stop a cancelled task at the next step."""

    __slots__ = ("schedules", "start", "end", "_check", "_memo_step", "_memo")

    def __init__(
        self,
        schedules: Mapping[str, Schedule],
        start: int = 0,
        end: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.schedules = dict(schedules)
        self.start = start
        self.end = end
        self._check = check
        self._memo_step: int | None = None
        self._memo: dict[str, Value] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self.schedules)

    def __call__(self, step: int) -> dict[str, Value]:
        if self._check is not None:
            self._check()
        if isinstance(step, bool) or not isinstance(step, int):
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            else:
                raise TypeError(f"hp(step): step must be an integer, got {step!r}")
        if step < 0:
            raise ValueError(f"hp(step): step must be >= 0, got {step}")
        if step != self._memo_step:
            self._memo = {name: c.value_at(step) for name, c in self.schedules.items()}
            self._memo_step = step
        return dict(self._memo)

    def __repr__(self) -> str:
        return f"Hp(names={self.names}, start={self.start}, end={self.end})"


# ---------------------------------------------------------------------------- helpers


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or int(v) != v:
        raise ScheduleError(f"{where}: expected an integer, got {v!r}")
    return int(v)


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ScheduleError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _positive(v: int, where: str) -> int:
    if v <= 0:
        raise ScheduleError(f"{where}: expected an integer >= 1, got {v}")
    return v


def _check_segments(segs: tuple[Segment, ...]) -> None:
    if not segs:
        raise ScheduleError("segments: expected at least one segment, got none")
    if segs[0].start != 0:
        raise ScheduleError(f"segments[0].start: expected 0, got {segs[0].start}")
    for k, s in enumerate(segs):
        last = k == len(segs) - 1
        if last and s.end is not None:
            raise ScheduleError(f"segments[{k}].end: the last segment must be open, got {s.end}")
        if not last:
            if s.end is None:
                raise ScheduleError(f"segments[{k}].end: only the last segment may be open")
            if s.end <= s.start:
                raise ScheduleError(
                    f"segments[{k}]: expected end > start, got [{s.start}, {s.end})"
                )
            if segs[k + 1].start != s.end:
                raise ScheduleError(
                    f"segments[{k + 1}].start: expected {s.end} (contiguous), "
                    f"got {segs[k + 1].start}"
                )


def _piece_from_proto(p: Any, where: str) -> Piece:
    kind = p.WhichOneof("kind")
    if kind == "constant":
        c = p.constant
        which = c.WhichOneof("value")
        if which == "number":
            return Piece("const", v=float(c.number))
        if which == "text":
            return Piece("const", v=c.text)
        raise ScheduleError(f"{where}.piece.constant: neither number nor text is set")
    if kind == "stair":
        s = p.stair
        return Piece(
            "stair",
            init=s.init,
            factor=s.factor,
            every=_positive(int(s.every), f"{where}.piece.stair.every"),
            origin=int(s.origin),
        )
    if kind == "exponential":
        e = p.exponential
        return Piece("exp", init=e.init, gamma=e.gamma, origin=int(e.origin))
    if kind == "cosine":
        c = p.cosine
        return Piece(
            "cos",
            max=c.max,
            min=c.min,
            period=_positive(int(c.period), f"{where}.piece.cosine.period"),
            origin=int(c.origin),
        )
    if kind == "linear":
        li = p.linear
        return Piece(
            "lin",
            from_=li.from_value,
            to=li.to_value,
            w=_positive(int(li.w), f"{where}.piece.linear.w"),
            origin=int(li.origin),
        )
    if kind == "triangle":
        t = p.triangle
        return Piece(
            "tri",
            low=t.low,
            high=t.high,
            h=_positive(int(t.h), f"{where}.piece.triangle.h"),
            origin=int(t.origin),
        )
    raise ScheduleError(f"{where}.piece: no kind is set")


def _piece_to_proto(p: Piece, out: Any) -> None:
    if p.f == "const":
        if isinstance(p.v, str):
            out.constant.text = p.v
        else:
            out.constant.number = p.v
    elif p.f == "stair":
        out.stair.init, out.stair.factor = p.init, p.factor
        out.stair.every, out.stair.origin = p.every, p.origin
    elif p.f == "exp":
        out.exponential.init, out.exponential.gamma = p.init, p.gamma
        out.exponential.origin = p.origin
    elif p.f == "cos":
        out.cosine.max, out.cosine.min = p.max, p.min
        out.cosine.period, out.cosine.origin = p.period, p.origin
    elif p.f == "lin":
        out.linear.from_value, out.linear.to_value = p.from_, p.to
        out.linear.w, out.linear.origin = p.w, p.origin
    elif p.f == "tri":
        out.triangle.low, out.triangle.high = p.low, p.high
        out.triangle.h, out.triangle.origin = p.h, p.origin
    else:  # pragma: no cover - Piece is only built by the readers above
        raise ScheduleError(f"unknown piece kind {p.f!r}")


def _piece_from_json(p: Any, where: str) -> Piece:
    if not isinstance(p, Mapping):
        raise ScheduleError(f"{where}: expected an object, got {p!r}")
    f = p.get("f")
    if f == "const":
        v = p.get("v")
        return Piece("const", v=v if isinstance(v, str) else _num(v, f"{where}.v"))
    if f == "stair":
        return Piece(
            "stair",
            init=_num(p.get("init"), f"{where}.init"),
            factor=_num(p.get("factor"), f"{where}.factor"),
            every=_positive(_int(p.get("every"), f"{where}.every"), f"{where}.every"),
            origin=_int(p.get("origin"), f"{where}.origin"),
        )
    if f == "exp":
        return Piece(
            "exp",
            init=_num(p.get("init"), f"{where}.init"),
            gamma=_num(p.get("gamma"), f"{where}.gamma"),
            origin=_int(p.get("origin"), f"{where}.origin"),
        )
    if f == "cos":
        return Piece(
            "cos",
            max=_num(p.get("max"), f"{where}.max"),
            min=_num(p.get("min"), f"{where}.min"),
            period=_positive(_int(p.get("period"), f"{where}.period"), f"{where}.period"),
            origin=_int(p.get("origin"), f"{where}.origin"),
        )
    if f == "lin":
        return Piece(
            "lin",
            from_=_num(p.get("from"), f"{where}.from"),
            to=_num(p.get("to"), f"{where}.to"),
            w=_positive(_int(p.get("w"), f"{where}.w"), f"{where}.w"),
            origin=_int(p.get("origin"), f"{where}.origin"),
        )
    if f == "tri":
        return Piece(
            "tri",
            low=_num(p.get("low"), f"{where}.low"),
            high=_num(p.get("high"), f"{where}.high"),
            h=_positive(_int(p.get("h"), f"{where}.h"), f"{where}.h"),
            origin=_int(p.get("origin"), f"{where}.origin"),
        )
    raise ScheduleError(f"{where}.f: expected one of {', '.join(PIECE_KINDS)}, got {f!r}")
