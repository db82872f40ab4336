"""The Python worker runtime: a trainer process that takes work from the engine.

Run as ``python -m stagetree.worker`` with these environment variables (the engine's
worker pool sets them):

- ``STAGETREE_ENGINE``: the engine's worker port, ``host:port``, or its Unix socket,
  ``unix:/path``.
- ``STAGETREE_WORKER_ID``: this worker's id, unique among live workers (the engine's
  ``Welcome.worker_id``, when set, replaces it).
- ``STAGETREE_WORKER_SECRET``: the secret the engine started this worker with, sent in
  ``Register.secret`` (never printed; removed from the environment the trainer sees).
- ``STAGETREE_TRAINER``: the trainer class, ``module:Class`` (imported from
  ``PYTHONPATH``; the class is instantiated once, with no arguments).
- ``STAGETREE_GPU_SHARE``: the share of its GPUs the worker was started for, in
  ``(0, 1]``; default 1.
- ``CUDA_VISIBLE_DEVICES``: the GPUs it may use (reported to the engine).
- ``STAGETREE_CONNECT_TIMEOUT``: seconds to wait for the engine; default 30.
- ``STAGETREE_CHUNK_SECONDS``: about how long one ``train()`` call lasts (see below);
  default ``CHUNK_SECONDS`` (10).

The protocol (``proto/stagetree/v1/worker.proto``): the worker dials the engine, opens
``WorkerHubService.Connect``, sends ``Register``, waits for ``Welcome``, then sends a
``Heartbeat`` every ``heartbeat_seconds`` from a thread and serves ``RunTask`` one at a
time with one trainer instance kept across tasks. Each run is trained in chunks of about
``STAGETREE_CHUNK_SECONDS`` (one ``train()`` call and one ``Progress`` each, sized by the
pace of the task's last chunk; a task's first chunk is one step). ``CancelTask`` stops the
running task at the next step (``hp(step)`` raises ``Cancelled``) and drops the trainer's
state; a task cancelled after its last step (while it saves or evaluates) sends no result.
``CutTask`` stops the task at the first chunk boundary strictly inside its last run: the
worker answers ``CutAt`` and waits, holding the state, for ``SaveCut``, which saves it
under the engine's key and ends the task there (``TaskDone``); a cut that comes during
the last chunk changes nothing, and a cancel while it waits is a cancel (no result).
``Shutdown`` cancels the running task, starts no other and ends the process with status
0 within a few seconds (at once, without the task's result, if the trainer does not
reach a step boundary within ``SHUTDOWN_GRACE_SECONDS``). Losing the engine (the stream
breaks, or the parent process dies and the worker is re-parented) ends the process with
status 1 and a one-line message on stderr within ``STOP_GRACE_SECONDS``, even while the
trainer is inside a long ``train()`` call. A configuration error (missing variable,
trainer that does not import) ends it with status 2 before it connects.

``python -m stagetree.worker --check`` only loads the trainer class named by
``STAGETREE_TRAINER`` and prints one JSON line: ``{"ok": true, "fingerprint":
"sha256:<hex>", "file": "<source file>"}`` (status 0) or ``{"ok": false, "error":
"<why>"}`` (status 1).
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import inspect
import json
import math
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from . import checkpoints
from .schedule import Hp, Schedule, schedules_from_proto
from .trainer import Cancelled

__all__ = [
    "PROTOCOL",
    "ConfigError",
    "WorkerConfig",
    "config_from_env",
    "load_trainer_class",
    "check_trainer",
    "Worker",
    "main",
]

PROTOCOL = "stagetree.v1"
LANGUAGE = "python"

EXIT_OK = 0
EXIT_ENGINE_LOST = 1
EXIT_CONFIG = 2

#: Seconds a trainer gets to reach a step boundary after the stream to the engine broke
#: before the process ends regardless (a long step in C code, a train() that never calls
#: hp). A dead parent process ends it at once.
STOP_GRACE_SECONDS = 2.0

#: Seconds the running task gets, after Shutdown, to stop at a step boundary before the
#: process ends regardless (status 0).
SHUTDOWN_GRACE_SECONDS = 2.0

#: Seconds to wait, when the worker ends after Shutdown, for queued messages to go out
#: and the engine to end the stream.
DRAIN_SECONDS = 2.0

#: How often the worker checks that its parent process (the engine) is still there.
PARENT_POLL_SECONDS = 0.2

#: A task's runs are trained in chunks of about this many seconds (one train() call each,
#: sized by the pace of the task's last chunk; a task's first chunk is one step): the
#: points where Progress is sent and a CutTask can stop the task (a paused study's stage
#: stops within about this long). Long enough that a trainer's per-call cost (a data
#: loader's start, say) stays small. STAGETREE_CHUNK_SECONDS sets it for a worker; the
#: TypeScript runtime's CHUNK_SECONDS is the same.
CHUNK_SECONDS = 10.0
CHUNK_SECONDS_ENV = "STAGETREE_CHUNK_SECONDS"

#: The largest message either side sends or accepts (gRPC's max_send_message_length and
#: max_receive_message_length on the channel; worker.proto, TaskFailed.reason).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: TaskFailed.message and TaskFailed.detail are cut to these many characters.
MAX_FAILED_MESSAGE_CHARS = 4096
MAX_FAILED_DETAIL_CHARS = 65536

#: TaskDone.seconds keys: process start-up (first task only), init(), checkpoint read
#: and load(), save() and write, train(), evaluate().
PHASES = ("start", "init", "load", "save", "train", "evaluate")

#: Errors writing a checkpoint that are the machine's, not the trainer's or the
#: worker's: TaskFailed with reason "environment" (the engine stops the run). The same
#: list as the TypeScript runtime's: no permission, a read-only or full disk, and a
#: checkpoint folder that vanished or was replaced by a file.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EACCES",
        "EPERM",
        "EROFS",
        "ENOSPC",
        "EDQUOT",
        "ENOTDIR",
        "ENOENT",
        "EEXIST",
        "EISDIR",
    )
    if hasattr(errno, name)
)

_T0 = time.monotonic()  # about when the process started (this module is imported early)
_PPID0 = os.getppid()  # the parent (the engine, or what started the worker) at start


class ConfigError(Exception):
    """The worker's environment is wrong; the message says which variable and why."""

    code = "WORKER_CONFIG"


class ProtocolError(Exception):
    """The engine asked for something the worker cannot do (its bookkeeping and the
    worker's state disagree). Reported as TaskFailed with reason "worker"."""


class CheckpointUnavailable(Exception):
    """The checkpoint to restore is missing or corrupt: TaskFailed with reason
    "checkpoint" (the engine re-computes the state instead of retrying)."""


class EnvironmentFailure(Exception):
    """The machine failed the task (a checkpoint folder that is not writable, a full
    disk): TaskFailed with reason "environment"."""


#: TaskFailed.reason values (worker.proto).
REASON_TRAINER = "trainer"
REASON_CHECKPOINT = "checkpoint"
REASON_ENVIRONMENT = "environment"
REASON_WORKER = "worker"


@dataclass(frozen=True)
class WorkerConfig:
    engine: str
    worker_id: str
    trainer: str
    gpu_share: float = 1.0
    gpus: tuple[int, ...] = ()
    connect_timeout: float = 30.0
    #: STAGETREE_CHUNK_SECONDS: about how long one train() call lasts.
    chunk_seconds: float = CHUNK_SECONDS
    #: STAGETREE_WORKER_SECRET, sent in Register.secret; kept out of repr() and logs.
    secret: str = field(default="", repr=False)


def _parse_gpus(value: str | None) -> tuple[int, ...]:
    """GPU indices from CUDA_VISIBLE_DEVICES; UUID or MIG names (not indices) are left
    out, and a negative index hides every GPU (CUDA's own rule)."""
    out = []
    for part in (value or "").split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            continue
        if n < 0:
            break
        out.append(n)
    return tuple(out)


def config_from_env(env: Mapping[str, str] | None = None) -> WorkerConfig:
    """Reads the worker's configuration from environment variables."""
    env = os.environ if env is None else env

    def need(name: str, expected: str) -> str:
        v = env.get(name, "").strip()
        if not v:
            raise ConfigError(f"{name}: expected {expected}, got nothing (variable not set)")
        return v

    engine = need("STAGETREE_ENGINE", "the engine's address as host:port or unix:/path")
    if engine.startswith("unix:"):  # the engine's hub on a Unix socket (gRPC's syntax)
        if not engine[len("unix:") :].strip("/"):
            raise ConfigError(f"STAGETREE_ENGINE: expected unix:/path, got {engine!r}")
    else:
        host, sep, port = engine.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"STAGETREE_ENGINE: expected host:port or unix:/path, got {engine!r}")
    worker_id = need("STAGETREE_WORKER_ID", "this worker's id")
    # Never echo the value (it is a credential).
    secret = env.get("STAGETREE_WORKER_SECRET", "")
    if not secret.strip():
        raise ConfigError(
            "STAGETREE_WORKER_SECRET: expected the secret the engine started this worker "
            "with, got nothing (variable not set)"
        )
    trainer = need("STAGETREE_TRAINER", "the trainer class as module:Class")
    if trainer.count(":") != 1 or not all(trainer.split(":")):
        raise ConfigError(f"STAGETREE_TRAINER: expected module:Class, got {trainer!r}")
    share_raw = env.get("STAGETREE_GPU_SHARE", "").strip() or "1"
    try:
        share = float(share_raw)
    except ValueError:
        share = float("nan")
    if not 0 < share <= 1:
        raise ConfigError(f"STAGETREE_GPU_SHARE: expected a number in (0, 1], got {share_raw!r}")
    timeout_raw = env.get("STAGETREE_CONNECT_TIMEOUT", "").strip() or "30"
    try:
        timeout = float(timeout_raw)
    except ValueError:
        timeout = float("nan")
    if not timeout > 0:
        raise ConfigError(f"STAGETREE_CONNECT_TIMEOUT: expected seconds > 0, got {timeout_raw!r}")
    chunk_raw = env.get(CHUNK_SECONDS_ENV, "").strip()
    try:
        chunk = float(chunk_raw) if chunk_raw else CHUNK_SECONDS
    except ValueError:
        chunk = float("nan")
    if not 0 < chunk < math.inf:
        raise ConfigError(f"{CHUNK_SECONDS_ENV}: expected seconds > 0, got {chunk_raw!r}")
    return WorkerConfig(
        engine=engine,
        worker_id=worker_id,
        trainer=trainer,
        gpu_share=share,
        gpus=_parse_gpus(env.get("CUDA_VISIBLE_DEVICES")),
        connect_timeout=timeout,
        chunk_seconds=chunk,
        secret=secret,
    )


TRAINER_METHODS = ("init", "train", "evaluate", "save", "load")


class TrainerNotLoadable(ConfigError):
    """STAGETREE_TRAINER does not name a usable trainer class. ``str()`` is the worker's
    configuration message; ``why`` the short reason ``--check`` prints."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def _where(e: BaseException) -> str:
    """`` (file:line)`` of the innermost frame of e's traceback outside importlib."""
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen ")
    ]
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _missing_methods(obj: Any) -> list[str]:
    """The trainer methods obj lacks; for a subclass of stagetree.Trainer, also those it
    does not override (the base class's only raise NotImplementedError)."""
    from .trainer import Trainer

    missing = []
    for m in TRAINER_METHODS:
        if not callable(getattr(obj, m, None)):
            missing.append(m)
        elif (
            inspect.isclass(obj)
            and issubclass(obj, Trainer)
            and getattr(obj, m) is getattr(Trainer, m)
        ):
            missing.append(m)
    return missing


def load_trainer_class(spec: str) -> Callable[[], Any]:
    """Imports ``module:Class`` (from ``sys.path``, which includes ``PYTHONPATH``);
    ``TrainerNotLoadable`` (a ``ConfigError``) says why it cannot be used."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise TrainerNotLoadable(
            f"STAGETREE_TRAINER: expected module:Class, got {spec!r}",
            f"STAGETREE_TRAINER: expected module:Class, got {spec!r}",
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        config = f"STAGETREE_TRAINER: cannot import module {module_name!r}: {type(e).__name__}: {e}"
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            why = str(e)  # the trainer's own module (or its package) is not on the path
        else:  # the module imports something that is not installed
            why = f"module {module_name} cannot be imported: {e}{_where(e)}"
        raise TrainerNotLoadable(config, why) from e
    except (Exception, SystemExit) as e:
        raise TrainerNotLoadable(
            f"STAGETREE_TRAINER: cannot import module {module_name!r}: {type(e).__name__}: {e}",
            f"module {module_name} raised {type(e).__name__} at import: {e}{_where(e)}",
        ) from e
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TrainerNotLoadable(
                f"STAGETREE_TRAINER: module {module_name!r} has no {attr!r}",
                f"module {module_name} has no class {attr}",
            ) from None
    if not inspect.isclass(obj) and not callable(obj):
        why = f"{attr} is not a trainer class (it is a {type(obj).__name__})"
        raise TrainerNotLoadable(f"STAGETREE_TRAINER: {spec}: {why}", why)
    missing = _missing_methods(obj)
    if missing:
        why = f"{attr} is not a trainer class (missing: {', '.join(missing)})"
        raise TrainerNotLoadable(
            f"STAGETREE_TRAINER: {spec} is not a trainer class (missing: {', '.join(missing)})",
            why,
        )
    return obj


def check_trainer(spec: str) -> dict[str, Any]:
    """What ``--check`` prints: ``{"ok": True, "fingerprint": "sha256:<hex>", "file":
    <absolute path>}`` (the SHA-256 of the bytes of the source file that defines the
    class) or ``{"ok": False, "error": <why>}``."""
    try:
        cls = load_trainer_class(spec.strip())
    except TrainerNotLoadable as e:
        return {"ok": False, "error": e.why}
    try:
        file = inspect.getsourcefile(cls) or inspect.getfile(cls)  # type: ignore[arg-type]
    except (TypeError, OSError):
        file = None
    if not file:
        module = sys.modules.get(getattr(cls, "__module__", "") or "")
        file = getattr(module, "__file__", None)
    if not file or not os.path.isfile(file):
        return {"ok": False, "error": f"cannot find the source file that defines {spec}"}
    file = os.path.abspath(file)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        return {"ok": False, "error": f"cannot read {file}: {e.strerror or e}"}
    return {"ok": True, "fingerprint": "sha256:" + hashlib.sha256(data).hexdigest(), "file": file}


def _pb() -> tuple[Any, Any]:
    try:
        from .gen import worker_pb2, worker_pb2_grpc
    except ImportError as e:  # pragma: no cover - depends on the checkout
        raise ConfigError(f"the protocol stubs are missing ({e}): run python/gen.sh first") from e
    # Stubs generated from an older worker.proto lack fields this runtime sends or reads.
    for message, name in (
        ("Register", "secret"),
        ("Welcome", "worker_id"),
        ("ConnectRequest", "cut_at"),
        ("ConnectResponse", "save_cut"),
    ):
        if name not in getattr(worker_pb2, message).DESCRIPTOR.fields_by_name:
            raise ConfigError(
                f"the protocol stubs are out of date ({message} has no field {name}): "
                "run python/gen.sh again"
            )
    return worker_pb2, worker_pb2_grpc


# --------------------------------------------------------------------------- tasks


@dataclass
class _Held:
    """The state the trainer holds in memory."""

    params_json: str
    #: The step the state is at; None after a checkpoint load (the file does not say).
    step: int | None
    #: Checkpoint keys this exact state is stored under (saved or loaded).
    keys: set[str] = field(default_factory=set)


@dataclass
class _Run:
    stage_id: str
    start: int
    end: int
    params: dict[str, Any]
    params_json: str
    schedules: dict[str, Schedule]


def _canonical_json(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def _seed_of(params: Mapping[str, Any]) -> int:
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or int(seed) != seed:
        raise ProtocolError(f"params.seed: expected an integer, got {seed!r}")
    return int(seed)


def _parse_runs(msg: Any) -> list[_Run]:
    if not msg.runs:
        raise ProtocolError(f"task {msg.task_id} has no stage runs")
    runs = []
    for k, r in enumerate(msg.runs):
        where = f"runs[{k}] (stage {r.stage_id})"
        try:
            params = json.loads(r.params_json) if r.params_json else {}
        except ValueError as e:
            raise ProtocolError(f"{where}.params_json: not JSON: {e}") from None
        if not isinstance(params, dict):
            raise ProtocolError(f"{where}.params_json: expected a JSON object, got {params!r}")
        if r.end < r.start or r.start < 0:
            raise ProtocolError(f"{where}: expected 0 <= start <= end, got [{r.start}, {r.end})")
        try:
            schedules = schedules_from_proto(r.schedules)
        except ValueError as e:
            raise ProtocolError(f"{where}: {e}") from None
        runs.append(
            _Run(r.stage_id, int(r.start), int(r.end), params, _canonical_json(params), schedules)
        )
    for k in range(1, len(runs)):
        if runs[k].start != runs[k - 1].end:
            raise ProtocolError(
                f"runs[{k}]: expected it to start where runs[{k - 1}] ends "
                f"({runs[k - 1].end}), got {runs[k].start}"
            )
        if runs[k].params_json != runs[0].params_json:
            raise ProtocolError(f"runs[{k}]: params differ from runs[0] within one task")
    return runs


def _chunk_steps(rate: float | None, left: int, chunk_seconds: float = CHUNK_SECONDS) -> int:
    """The steps of the next chunk when ``left`` steps of the run remain and the task's
    last chunk took ``rate`` seconds per step (None: none measured yet, so one step)."""
    if rate is None:
        return min(1, left)
    if rate <= 0:
        return left
    per_chunk = chunk_seconds / rate  # a float; floor() of it could be huge, so compare first
    if per_chunk >= left:
        return left
    return max(1, math.floor(per_chunk))


def _metrics(raw: Any) -> dict[str, float]:
    """evaluate()'s result as TaskDone.metrics. NaN and +/-infinity are valid values (a
    diverged trial is a normal result) and are sent as such."""
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"evaluate() must return a dict of name -> number, got {type(raw).__name__}"
        )
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str):
            raise TypeError(f"evaluate(): metric names must be strings, got {k!r}")
        if isinstance(v, (str, bytes, bytearray)):  # float("0.5") would accept a text
            raise TypeError(f"evaluate(): metric {k!r} must be a number, got {v!r}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"evaluate(): metric {k!r} must be a number, got {v!r}") from None
    return out


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"save() must return bytes, got {type(data).__name__}")


def _cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and a note of how
    many characters were cut, ``limit`` characters in all."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    while True:
        note = f" [... {cut} characters cut]"
        keep = max(0, limit - len(note))
        if len(text) - keep == cut:
            return text[:keep] + note
        cut = len(text) - keep


def _flush_output() -> None:
    """Flushes what the trainer printed (Python's streams and the C library's) so that an
    os._exit loses nothing. Runs in a helper thread with a time limit: a stream whose
    lock another thread holds (a print blocked on a full pipe) must not keep the process
    alive."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        try:
            import ctypes

            ctypes.CDLL(None).fflush(None)  # C-level stdio buffers (extensions' printf)
        except Exception:
            pass

    t = threading.Thread(target=flush, name="stagetree-flush", daemon=True)
    t.start()
    t.join(1.0)


class Worker:
    """One worker: a connection to the engine and one trainer instance.

    ``trainer_factory`` makes the trainer (called once). ``run()`` returns the process
    exit status: 0 after Shutdown, 1 when the engine is lost. When the trainer does not
    give the thread back in time (see ``STOP_GRACE_SECONDS``, ``SHUTDOWN_GRACE_SECONDS``)
    and when the parent process dies, the process ends from another thread with
    ``os._exit`` (after flushing its output): a ``Worker`` is meant to own its process.
    """

    def __init__(
        self,
        config: WorkerConfig,
        trainer_factory: Callable[[], Any],
        *,
        stderr: Any = None,
        parent_pid: int | None = None,
    ) -> None:
        self.config = config
        self.worker_id = config.worker_id  # the engine's Welcome.worker_id replaces it
        self._factory = trainer_factory
        self._stderr = stderr if stderr is not None else sys.stderr
        self._parent_pid = _PPID0 if parent_pid is None else parent_pid
        self._pb2, self._pb2_grpc = _pb()
        self.trainer: Any = None
        self._held: _Held | None = None
        self._initialized_params: str | None = None  # params of the last init() that stands
        self._checkpoint_dir = ""
        self._heartbeat_seconds = 5.0
        self._startup_seconds: float | None = None

        self._outbox: queue.Queue[Any] = queue.Queue()
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._running = 0  # task id running now, 0 if idle
        self._idle = threading.Event()  # set while no task runs
        self._idle.set()
        self._cancel = threading.Event()  # set: the running task must stop
        self._cancelled: set[int] = set()  # ids cancelled before they started
        self._cuts: set[int] = set()  # ids the engine asked to cut short, until they end
        self._cut_waiting = 0  # the task waiting for its SaveCut (after CutAt), 0 if none
        self._cut_key: str | None = None  # the key its SaveCut named, None until it comes
        # Notified (under _lock) when a SaveCut comes or the waiting task is cancelled.
        self._cut_changed = threading.Condition(self._lock)
        self._dropped = 0  # results not sent because their task was cancelled first
        self._exit: tuple[int, str] | None = None
        self._exit_printed = False
        self._closed = threading.Event()
        self._drained = threading.Event()  # the request stream has sent everything
        self._call_done = threading.Event()  # the RPC has ended
        self._channel: Any = None
        self._call: Any = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        import grpc

        cfg = self.config
        threading.Thread(
            target=self._watch_parent, name="stagetree-parent-watch", daemon=True
        ).start()
        try:
            self.trainer = self._factory()
        except Exception as e:
            self._print(f"cannot construct the trainer {cfg.trainer}: {type(e).__name__}: {e}")
            return EXIT_CONFIG
        self._channel = grpc.insecure_channel(
            cfg.engine,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        try:
            try:
                grpc.channel_ready_future(self._channel).result(timeout=cfg.connect_timeout)
            except grpc.FutureTimeoutError:
                return self._fail(
                    f"cannot reach the engine at {cfg.engine} within {cfg.connect_timeout:g} s"
                )
            stub = self._pb2_grpc.WorkerHubServiceStub(self._channel)
            self._send(
                register=self._pb2.Register(
                    worker_id=cfg.worker_id,
                    language=LANGUAGE,
                    protocol=PROTOCOL,
                    pid=os.getpid(),
                    gpus=list(cfg.gpus),
                    gpu_share=cfg.gpu_share,
                    holds="",
                    secret=cfg.secret,
                )
            )
            self._call = stub.Connect(self._requests())
            self._call.add_done_callback(lambda _call: self._call_done.set())
            welcome = self._await_welcome(cfg.connect_timeout)
            if isinstance(welcome, int):
                return welcome
            self._checkpoint_dir = welcome.checkpoint_dir
            if welcome.heartbeat_seconds > 0:
                self._heartbeat_seconds = welcome.heartbeat_seconds
            if welcome.worker_id and welcome.worker_id != self.worker_id:
                self._print(f"the engine knows this worker as {welcome.worker_id}")
                self.worker_id = welcome.worker_id
            self._startup_seconds = time.monotonic() - _T0
            threading.Thread(target=self._read, name="stagetree-reader", daemon=True).start()
            threading.Thread(target=self._beat, name="stagetree-heartbeat", daemon=True).start()
            return self._serve()
        finally:
            self._close()

    def _await_welcome(self, timeout: float) -> Any:
        result: queue.Queue[Any] = queue.Queue()

        def first() -> None:
            try:
                result.put(next(iter(self._call)))
            except StopIteration:
                result.put(RuntimeError("the engine closed the stream before Welcome"))
            except Exception as e:  # grpc.RpcError
                result.put(e)

        threading.Thread(target=first, name="stagetree-welcome", daemon=True).start()
        try:
            msg = result.get(timeout=timeout)
        except queue.Empty:
            return self._fail(
                f"no Welcome from the engine at {self.config.engine} within {timeout:g} s"
            )
        if isinstance(msg, Exception):
            return self._fail(f"lost the engine at {self.config.engine}: {_describe(msg)}")
        if msg.WhichOneof("body") == "shutdown":
            # The engine refuses this worker (say, a pool that does not expect its id).
            self._print(f"the engine sent Shutdown instead of Welcome: {msg.shutdown.reason}")
            return EXIT_OK
        if msg.WhichOneof("body") != "welcome":
            return self._fail(
                f"protocol error: expected Welcome first, got {msg.WhichOneof('body')}"
            )
        return msg.welcome

    def _serve(self) -> int:
        while True:
            if self._exit is not None:
                return self._finish()
            kind, payload = self._events.get()
            if kind != "run":
                continue  # a wake-up: look at _exit
            with self._lock:
                skip = payload.task_id in self._cancelled or self._exit is not None
                self._cancelled.discard(payload.task_id)
                if skip:
                    self._cuts.discard(payload.task_id)
                else:
                    self._running = payload.task_id
                    self._idle.clear()
                    self._cancel.clear()
            if skip:
                # Cancelled before it started (or the worker is stopping): "cancelled"
                # always leaves the worker holding nothing.
                self._drop_state()
                continue
            try:
                self._execute(payload)
            finally:
                with self._lock:
                    self._running = 0
                    self._cuts.discard(payload.task_id)
                    self._cut_waiting = 0
                    self._cut_key = None
                    if self._exit is None:
                        self._cancel.clear()
                    self._idle.set()

    def _finish(self) -> int:
        code, message = self._exit or (EXIT_OK, "")
        if code != EXIT_OK:
            self._print_exit(message)
        return code

    def _fail(self, message: str) -> int:
        self._print(message)
        return EXIT_ENGINE_LOST

    def _print(self, message: str) -> None:
        line = " ".join(str(message).split())  # one line
        try:
            print(f"stagetree worker {self.worker_id}: {line}", file=self._stderr, flush=True)
        except Exception:  # pragma: no cover - stderr closed
            pass

    def _print_exit(self, message: str) -> None:
        """The exit message, once (the main thread and a watchdog may both get there)."""
        with self._lock:
            if self._exit_printed or not message:
                return
            self._exit_printed = True
        self._print(message)

    def _hard_exit(self, code: int, message: str = "") -> None:
        """Ends the process now, from a thread that is not the trainer's: the exit
        message (once), flushed output, os._exit."""
        self._print_exit(message)
        _flush_output()
        os._exit(code)

    def _stop(self, code: int, message: str) -> None:
        """Called from the reader thread. Both Shutdown (code 0) and a lost engine (code
        1) cancel the running task (it stops at its next step and sends no result) and
        start no other. A lost engine ends the process anyway if it still runs after
        STOP_GRACE_SECONDS; after Shutdown, a task that has not stopped within
        SHUTDOWN_GRACE_SECONDS is abandoned and the process ends with status 0."""
        with self._lock:
            if self._exit is not None:
                return
            self._exit = (code, message)
            self._cancel.set()
            self._cut_changed.notify_all()  # a task waiting for SaveCut stops waiting
        self._events.put(("wake", None))

        def watchdog() -> None:
            if code != EXIT_OK:
                time.sleep(STOP_GRACE_SECONDS)
                self._hard_exit(code, message)
            if not self._idle.wait(SHUTDOWN_GRACE_SECONDS):
                with self._lock:
                    task = self._running
                self._print(
                    f"{message}: task {task} did not stop within "
                    f"{SHUTDOWN_GRACE_SECONDS:g} s, exiting without its result"
                )
                self._hard_exit(EXIT_OK)
            # The main thread drains the stream (at most DRAIN_SECONDS) and returns.
            time.sleep(DRAIN_SECONDS + 1.0)
            self._hard_exit(EXIT_OK)

        threading.Thread(target=watchdog, name="stagetree-exit-watchdog", daemon=True).start()

    def _watch_parent(self) -> None:
        """Ends the process (status 1) when the parent process is gone: the worker was
        re-parented (to init or a sub-reaper), so the engine that started it died
        without closing the stream cleanly."""
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            now = os.getppid()
            if now != self._parent_pid:
                message = (
                    f"lost the engine: the parent process {self._parent_pid} is gone "
                    f"(the worker now belongs to process {now})"
                )
                with self._lock:
                    if self._exit is None:
                        self._exit = (EXIT_ENGINE_LOST, message)
                    self._cancel.set()
                    code, message = self._exit
                # After a Shutdown (the engine exited before this worker did) the
                # status stays 0 and nothing is printed.
                self._hard_exit(code, message if code != EXIT_OK else "")

    def _close(self) -> None:
        self._closed.set()
        self._outbox.put(None)  # half-close after what is queued (a last TaskDone) is sent
        if self._call is not None:
            if self._exit is not None and self._exit[0] == EXIT_OK:
                # Let the last messages out: the request stream ends once everything
                # queued was handed to gRPC, then the engine answers the half-close by
                # ending its side. Cancelling earlier could drop a final message.
                deadline = time.monotonic() + DRAIN_SECONDS
                self._drained.wait(DRAIN_SECONDS)
                self._call_done.wait(max(0.0, deadline - time.monotonic()))
            try:
                self._call.cancel()
            except Exception:  # pragma: no cover
                pass
        if self._channel is not None:
            try:
                self._channel.close()
            except Exception:  # pragma: no cover
                pass

    # ------------------------------------------------------------------ streams

    def _requests(self) -> Iterator[Any]:
        try:
            while True:
                msg = self._outbox.get()
                if msg is None:
                    return
                yield msg
        finally:
            self._drained.set()

    def _send(self, **body: Any) -> None:
        if not self._closed.is_set():
            self._outbox.put(self._pb2.ConnectRequest(**body))

    def _read(self) -> None:
        import grpc

        try:
            for msg in self._call:
                kind = msg.WhichOneof("body")
                if kind == "run":
                    self._events.put(("run", msg.run))
                elif kind == "cancel":
                    self._on_cancel(msg.cancel.task_id)
                elif kind == "cut":
                    self._on_cut(msg.cut.task_id)
                elif kind == "save_cut":
                    self._on_save_cut(msg.save_cut.task_id, msg.save_cut.key)
                elif kind == "shutdown":
                    # Keep reading (and ignoring) until the engine ends the stream.
                    self._stop(EXIT_OK, f"shutdown: {msg.shutdown.reason}")
                elif kind == "welcome":
                    pass  # a repeated Welcome changes nothing
            self._stop(
                EXIT_ENGINE_LOST,
                f"lost the engine at {self.config.engine}: it closed the stream without Shutdown",
            )
        except grpc.RpcError as e:
            if self._closed.is_set():
                return
            self._stop(EXIT_ENGINE_LOST, f"lost the engine at {self.config.engine}: {_describe(e)}")
        except Exception as e:  # pragma: no cover - a bug here must not hang the worker
            self._stop(EXIT_ENGINE_LOST, f"worker stream error: {type(e).__name__}: {e}")

    def _on_cancel(self, task_id: int) -> None:
        with self._lock:
            if task_id == self._running and task_id != 0:
                self._cancel.set()
                self._cut_changed.notify_all()  # a task waiting for SaveCut stops waiting
            else:
                # Not started yet (or already finished, then this changes nothing).
                self._cancelled.add(task_id)

    def _on_cut(self, task_id: int) -> None:
        """CutTask: the running task (or, when it starts, a queued one) stops at the first
        chunk boundary strictly inside its last run. Remembered until the task ends (a cut
        for a task that already ended changes nothing)."""
        if task_id == 0:
            return
        with self._lock:
            self._cuts.add(task_id)

    def _on_save_cut(self, task_id: int, key: str) -> None:
        """SaveCut: the key the waiting task saves its cut state under. Ignored unless
        that task waits for it (a late or stray answer changes nothing)."""
        with self._lock:
            if task_id != 0 and task_id == self._cut_waiting and self._cut_key is None:
                self._cut_key = key
                self._cut_changed.notify_all()

    def _beat(self) -> None:
        while not self._closed.wait(self._heartbeat_seconds):
            with self._lock:
                task = self._running
            self._send(heartbeat=self._pb2.Heartbeat(task_id=task))

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    # ------------------------------------------------------------------ one task

    def _drop_state(self) -> None:
        self._held = None
        self._initialized_params = None

    def _need_dir(self, what: str) -> str:
        if not self._checkpoint_dir:
            raise ProtocolError(f"{what}: the engine's Welcome named no checkpoint_dir")
        return self._checkpoint_dir

    def _init(self, run: _Run) -> None:
        self._initialized_params = None
        self.trainer.init(dict(run.params), _seed_of(run.params))
        self._initialized_params = run.params_json

    def _save(self, key: str, what: str) -> None:
        data = _as_bytes(self.trainer.save())
        directory = self._need_dir(what)
        try:
            checkpoints.write_checkpoint(directory, key, data)
        except checkpoints.CheckpointError as e:
            raise ProtocolError(f"{what} {key}: {e}") from None
        except OSError as e:
            path = os.path.join(directory, f"{key}.ckpt")
            if e.errno in ENVIRONMENT_ERRNOS:
                name = errno.errorcode.get(e.errno, str(e.errno))
                at = f" ({e.filename})" if e.filename and str(e.filename) != path else ""
                raise EnvironmentFailure(
                    f"{what} {key}: cannot write the checkpoint {path}: "
                    f"{e.strerror or e} [{name}]{at}"
                ) from None
            raise ProtocolError(f"{what} {key}: cannot write the checkpoint {path}: {e}") from None

    def _execute(self, msg: Any) -> None:
        task_id = msg.task_id
        seconds = dict.fromkeys(PHASES, 0.0)
        if self._startup_seconds is not None:
            seconds["start"] = self._startup_seconds
            self._startup_seconds = None
        clock = time.monotonic
        try:
            runs = _parse_runs(msg)
            first = runs[0]

            if msg.save_first:
                if self._held is None:
                    raise ProtocolError(
                        f"save_first {msg.save_first}: the worker holds no state to save"
                    )
                t = clock()
                self._save(msg.save_first, "save_first")
                seconds["save"] += clock() - t
                self._held.keys.add(msg.save_first)

            source = msg.restore.WhichOneof("source")
            if source == "memory":
                self._restore_memory(msg.restore.memory, first)
            elif source == "checkpoint":
                key = msg.restore.checkpoint
                t = clock()
                try:
                    data = checkpoints.read_checkpoint(self._need_dir("restore"), key)
                except (checkpoints.CheckpointError, OSError) as e:
                    raise CheckpointUnavailable(str(e)) from None
                self._held = None
                # load() follows init() with the same params (docs/python.md; the
                # TypeScript runtime does the same): skipped only while an init with
                # these params still stands.
                if self._initialized_params != first.params_json:
                    t_init = clock()
                    self._init(first)
                    seconds["init"] += clock() - t_init
                    t += clock() - t_init
                self.trainer.load(data)
                self._held = _Held(first.params_json, None, {key})
                seconds["load"] += clock() - t
            elif source == "init":
                t = clock()
                self._held = None
                self._init(first)
                self._held = _Held(first.params_json, 0)
                seconds["init"] += clock() - t
            else:
                raise ProtocolError("restore: no source (memory, checkpoint or init) is set")

            held = self._held
            assert held is not None
            cut_key = self._train(task_id, runs, held, seconds)
            self._check_cancel()

            if cut_key is not None:
                # Cut short: the task now ends at the cut step, saved under the engine's
                # key (its save_after and end_key name the uncut end, which never came).
                t = clock()
                self._save(cut_key, "save_cut")
                seconds["save"] += clock() - t
                held.keys = {cut_key}
            else:
                if msg.save_after:
                    t = clock()
                    self._save(msg.save_after, "save_after")
                    seconds["save"] += clock() - t
                    held.keys.add(msg.save_after)
                if msg.end_key:
                    held.keys.add(msg.end_key)

            t = clock()
            metrics = _metrics(self.trainer.evaluate())
            seconds["evaluate"] += clock() - t
            done = self._pb2.ConnectRequest(
                done=self._pb2.TaskDone(task_id=task_id, metrics=metrics, seconds=seconds)
            )
            size = done.ByteSize()
            if size > MAX_MESSAGE_BYTES:
                # gRPC would refuse it and break the stream: report it instead.
                self._failed(
                    task_id,
                    REASON_TRAINER,
                    f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes "
                    f"(evaluate() returned {len(metrics)} metrics)",
                    "TaskDone would carry every metric evaluate() returned; return fewer "
                    "or shorter names",
                )
                return
            self._result(task_id, done)
        except Cancelled:
            self._drop_state()
            self._send(heartbeat=self._pb2.Heartbeat(task_id=0))
        except ProtocolError as e:
            self._failed(
                task_id,
                REASON_WORKER,
                f"worker {self.worker_id}: {e}",
                "the engine's view of this worker and the worker's own state differ",
            )
        except CheckpointUnavailable as e:
            self._failed(task_id, REASON_CHECKPOINT, str(e), "")
        except EnvironmentFailure as e:
            self._failed(
                task_id,
                REASON_ENVIRONMENT,
                str(e),
                "the machine, not the trainer: the checkpoint folder is not writable or "
                "the disk is full",
            )
        except Exception as e:
            self._failed(
                task_id, REASON_TRAINER, f"{type(e).__name__}: {e}", traceback.format_exc()
            )

    def _train(
        self, task_id: int, runs: list[_Run], held: _Held, seconds: dict[str, float]
    ) -> str | None:
        """Trains the task's runs in chunks (see ``CHUNK_SECONDS``), sending Progress
        after each. Returns None when every run was trained to its end, or the SaveCut key
        when the task was cut short (``held.step`` is then the cut step)."""
        clock = time.monotonic
        rate: float | None = None  # seconds per step of the task's last chunk
        for k, run in enumerate(runs):
            if held.step is not None and run.start != held.step:
                raise ProtocolError(
                    f"stage {run.stage_id} starts at step {run.start}, but the state "
                    f"is at step {held.step}"
                )
            last = k == len(runs) - 1
            held.keys = set()  # training changes the state
            at = run.start
            while at < run.end:
                self._check_cancel()
                to = at + _chunk_steps(rate, run.end - at, self.config.chunk_seconds)
                hp = Hp(run.schedules, at, to, check=self._check_cancel)
                held.step = None  # unknown if train() fails half-way
                t = clock()
                self.trainer.train(at, to, hp)
                elapsed = clock() - t
                seconds["train"] += elapsed
                rate = elapsed / (to - at)
                self._check_cancel()
                held.step = to
                self._send(progress=self._pb2.Progress(task_id=task_id, step=to))
                if last and to < run.end:
                    key = self._await_save_cut(task_id, to)
                    if key is not None:
                        return key
                at = to
        return None

    def _await_save_cut(self, task_id: int, step: int) -> str | None:
        """At a chunk boundary at ``step`` strictly inside the task's last run: if the
        engine asked to cut the task, sends CutAt and blocks until its SaveCut comes
        (returns its key); None when no cut was asked for. A cancel, a Shutdown or a lost
        engine while it waits raises Cancelled (the state is dropped, no result)."""
        with self._lock:
            if task_id not in self._cuts:
                return None
            if self._cancel.is_set():
                raise Cancelled()
            self._cut_waiting = task_id
            self._cut_key = None
            self._send(cut_at=self._pb2.CutAt(task_id=task_id, step=step))
            # wait() releases the lock: heartbeats, cancels and SaveCut go on meanwhile.
            while self._cut_key is None and not self._cancel.is_set():
                self._cut_changed.wait()
            key = self._cut_key
            self._cut_waiting = 0
            self._cut_key = None
            if self._cancel.is_set() or key is None:
                raise Cancelled()
            return key

    def _failed(self, task_id: int, reason: str, message: str, detail: str) -> None:
        self._drop_state()
        self._result(
            task_id,
            self._pb2.ConnectRequest(
                failed=self._pb2.TaskFailed(
                    task_id=task_id,
                    message=_cut(message, MAX_FAILED_MESSAGE_CHARS),
                    detail=_cut(detail, MAX_FAILED_DETAIL_CHARS),
                    reason=reason,
                )
            ),
        )

    def _result(self, task_id: int, msg: Any) -> None:
        """Sends a task's TaskDone or TaskFailed, unless the task was cancelled first
        (a cancel that came while it saved or evaluated, a Shutdown, a lost engine):
        then the result is dropped, and so is the state, as for any cancel."""
        with self._lock:
            # Under the lock that _on_cancel takes: a cancel is either seen here (and
            # the result dropped) or comes after the result is queued.
            cancelled = self._cancel.is_set()
            if not cancelled and not self._closed.is_set():
                self._outbox.put(msg)
            if cancelled:
                self._dropped += 1
                dropped = self._dropped
        if cancelled:
            self._drop_state()
            exit_ = self._exit
            if exit_ is None or exit_[0] == EXIT_OK:  # a lost engine gets its one line only
                kind = "TaskDone" if msg.WhichOneof("body") == "done" else "TaskFailed"
                self._print(
                    f"task {task_id} was cancelled before its result was sent: its {kind} "
                    f"is dropped ({dropped} result{'s' if dropped != 1 else ''} dropped so far)"
                )
            self._send(heartbeat=self._pb2.Heartbeat(task_id=0))

    def _restore_memory(self, key: str, first: _Run) -> None:
        held = self._held
        if held is None:
            raise ProtocolError(f"restore from memory {key}: the worker holds no state")
        if key and held.keys and key not in held.keys:
            raise ProtocolError(
                f"restore from memory {key}: the worker holds {', '.join(sorted(held.keys))}"
            )
        if held.params_json != first.params_json:
            raise ProtocolError(
                f"restore from memory {key}: the held state was trained with other params"
            )


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None)
    details = getattr(e, "details", None)
    if callable(code) and callable(details):
        try:
            c = code()
            name = getattr(c, "name", str(c))
            return f"{name}: {details()}"
        except Exception:  # pragma: no cover
            pass
    return f"{type(e).__name__}: {e}"


def _check_main() -> int:
    """``--check``: load the trainer class, print one JSON line, 0 if it is usable."""
    # Whatever the trainer's module prints at import goes to stderr: stdout carries
    # exactly one JSON line (fd level too, for C code).
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        real_stdout = sys.stdout
        sys.stdout = sys.stderr
        try:
            result = check_trainer(os.environ.get("STAGETREE_TRAINER", ""))
        finally:
            sys.stdout = real_stdout
            _flush_output()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stagetree.worker [--check]``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        return _check_main()
    if args:
        print(
            f"usage: python -m stagetree.worker [--check] (got {' '.join(args)!r})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_CONFIG
    # What the trainer prints reaches the pool line by line, not when a buffer fills.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except Exception:  # pragma: no cover - a replaced stream
            pass
    try:
        config = config_from_env()
        # The trainer (user code, and whatever it starts) does not need the credential.
        os.environ.pop("STAGETREE_WORKER_SECRET", None)
        factory = load_trainer_class(config.trainer)
        worker = Worker(config, factory)
    except ConfigError as e:
        wid = os.environ.get("STAGETREE_WORKER_ID", "?")
        print(f"stagetree worker {wid}: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    try:
        return worker.run()
    except Exception as e:
        worker._print(f"{type(e).__name__}: {e}")
        return EXIT_ENGINE_LOST


if __name__ == "__main__":
    code = main()

    # Threads the trainer started (non-daemon) must not keep a finished worker alive:
    # interpreter shutdown waits for them, so end the process if it takes long.
    def _exit_anyway() -> None:
        time.sleep(STOP_GRACE_SECONDS)
        _flush_output()
        os._exit(code)

    threading.Thread(target=_exit_anyway, name="stagetree-final-exit", daemon=True).start()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
