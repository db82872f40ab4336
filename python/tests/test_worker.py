"""The worker runtime against a fake engine (a real grpcio server on 127.0.0.1:0), with
the worker as a real process started like the engine's pool starts it."""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from fake_engine import (
    PYTHON_DIR,
    SECRET,
    FakeEngine,
    constant,
    run_task,
    stage_run,
    stair,
    start_worker,
    worker_env,
)
from trainers import TestTrainer

from stagetree.checkpoints import OLD_MAGIC, read_checkpoint, write_checkpoint
from stagetree.schedule import Hp, Schedule
from stagetree.worker import (
    CHUNK_SECONDS,
    MAX_MESSAGE_BYTES,
    ConfigError,
    _chunk_steps,
    config_from_env,
)

PARAMS = {"seed": 3, "dim": 5, "samples": 32, "batch": 4}


def schedules() -> dict[str, Any]:
    return {"lr": stair(0.08, 0.5, 6), "momentum": constant(0.9), "optimizer": constant("sgd")}


def local(ranges: list[tuple[int, int]], params: dict[str, Any] = PARAMS) -> TestTrainer:
    """The same training in this process: what the worker must reproduce exactly."""
    tr = TestTrainer()
    tr.init(params, params["seed"])
    s = {k: Schedule.from_proto(v) for k, v in schedules().items()}
    for a, b in ranges:
        tr.train(a, b, Hp(s, a, b))
    return tr


def exact(metrics: Any) -> dict[str, str]:
    return {k: struct.pack("<d", v).hex() for k, v in dict(metrics).items()}


class Session:
    def __init__(self, engine: FakeEngine, proc: subprocess.Popen[str], ckpt: Path) -> None:
        self.engine = engine
        self.proc = proc
        self.ckpt = ckpt

    def welcome(self, heartbeat: float = 0.05, worker_id: str = "") -> Any:
        reg = self.engine.expect("register")
        self.engine.send(
            welcome=self.engine_pb().Welcome(
                checkpoint_dir=str(self.ckpt), heartbeat_seconds=heartbeat, worker_id=worker_id
            )
        )
        return reg

    @staticmethod
    def engine_pb() -> Any:
        from stagetree.gen import worker_pb2

        return worker_pb2

    def task(self, task: Any) -> Any:
        self.engine.send(run=task)
        return task.task_id

    def wait_exit(self, timeout: float = 15.0) -> tuple[int, str]:
        return self.wait_exit_out(timeout)[::2]

    def wait_exit_out(self, timeout: float = 15.0) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once the worker has exited."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"the worker did not exit; stderr:\n{err}") from None
        return self.proc.returncode, out, err


def _session(tmp_path: Path, **env: str) -> Iterator[Session]:
    engine = FakeEngine()
    proc = start_worker(worker_env(engine.address, **env))
    s = Session(engine, proc, tmp_path / "ckpt")
    try:
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        engine.stop()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    yield from _session(tmp_path)


@pytest.fixture
def chunked(tmp_path: Path) -> Iterator[Session]:
    """A worker that trains in chunks of about 1 s (STAGETREE_CHUNK_SECONDS), not 10."""
    yield from _session(tmp_path, STAGETREE_CHUNK_SECONDS="1")


def test_register_tasks_memory_checkpoints_and_shutdown(session: Session) -> None:
    e = session.engine
    reg = session.welcome()
    assert reg.worker_id == "w-test"
    assert reg.language == "python"
    assert reg.protocol == "stagetree.v1"
    assert reg.pid == session.proc.pid
    assert list(reg.gpus) == [0, 2]
    assert reg.gpu_share == 0.5
    assert reg.holds == ""
    assert reg.secret == SECRET
    e.wait_heartbeat(0)

    # 1: fresh trainer, [0, 10), keep the end state as Ka.
    session.task(
        run_task(
            1,
            [stage_run("S1", 0, 10, PARAMS, schedules())],
            init=True,
            save_after="Ka",
            end_key="Ka",
        )
    )
    # A task's first chunk is one step; the rest of this fast run is one more.
    steps, done = e.progress_then(1, "done")
    assert steps == [1, 10]
    assert exact(done.metrics) == exact(local([(0, 10)]).evaluate())
    assert set(done.seconds) == {"start", "init", "save", "load", "train", "evaluate"}
    assert done.seconds["start"] > 0 and done.seconds["init"] > 0 and done.seconds["save"] > 0
    assert read_checkpoint(session.ckpt, "Ka") == local([(0, 10)]).save()

    # 2: continue from memory with [10, 20) = one run [0, 20), bit for bit.
    whole = local([(0, 20)])
    session.task(
        run_task(2, [stage_run("S2", 10, 20, PARAMS, schedules())], memory="Ka", end_key="K20")
    )
    steps, done = e.progress_then(2, "done")
    assert steps == [11, 20]
    assert exact(done.metrics) == exact(whole.evaluate())
    assert done.seconds["start"] == done.seconds["init"] == done.seconds["load"] == 0.0

    # 3: save what it holds (step 20) as Kb first, then load Ka and train [10, 20) in
    # two stages: the same result again, now from the checkpoint.
    session.task(
        run_task(
            3,
            [
                stage_run("S2a", 10, 15, PARAMS, schedules()),
                stage_run("S2b", 15, 20, PARAMS, schedules()),
            ],
            checkpoint="Ka",
            save_first="K20",
            save_after="Kc",
            end_key="Kc",
        )
    )
    steps, done = e.progress_then(3, "done")
    assert steps == [11, 15, 20]  # one step, the rest of the first run, the second run
    assert exact(done.metrics) == exact(whole.evaluate())
    assert done.seconds["load"] > 0
    assert read_checkpoint(session.ckpt, "K20") == whole.save()
    assert read_checkpoint(session.ckpt, "Kc") == whole.save()

    # 4: the engine names a state the worker does not hold: TaskFailed, state dropped.
    session.task(run_task(4, [stage_run("S3", 20, 25, PARAMS, schedules())], memory="Kwrong"))
    failed = e.expect("failed")
    assert failed.task_id == 4 and failed.reason == "worker"
    assert "Kwrong" in failed.message and "holds Kc" in failed.message
    session.task(run_task(5, [stage_run("S3", 20, 25, PARAMS, schedules())], memory="Kc"))
    failed = e.expect("failed")
    assert failed.task_id == 5 and "holds no state" in failed.message

    # 6: a checkpoint load in a process that holds nothing: init + load, then train.
    session.task(
        run_task(6, [stage_run("S3", 20, 25, PARAMS, schedules())], checkpoint="Kc", end_key="K25")
    )
    e.expect("progress")
    done = e.expect("done")
    assert exact(done.metrics) == exact(local([(0, 25)]).evaluate())
    assert done.seconds["init"] > 0 and done.seconds["load"] > 0

    # 7: the end key names the state held after a task without a save.
    session.task(
        run_task(7, [stage_run("S4", 25, 27, PARAMS, schedules())], memory="K25", end_key="K27")
    )
    e.expect("progress")
    assert exact(e.expect("done").metrics) == exact(local([(0, 27)]).evaluate())

    # 8: a missing checkpoint: reason "checkpoint", so the engine re-computes it.
    session.task(run_task(8, [stage_run("S4", 25, 27, PARAMS, schedules())], checkpoint="Kgone"))
    failed = e.expect("failed")
    assert failed.reason == "checkpoint" and "Kgone" in failed.message

    e.send(shutdown=session.engine_pb().Shutdown(reason="study finished"))
    code, err = session.wait_exit()
    assert code == 0, err
    assert err == ""


def test_trainer_error_is_task_failed_and_drops_state(session: Session) -> None:
    e = session.engine
    session.welcome()
    bad = {**PARAMS, "fail_at": 3}
    session.task(run_task(1, [stage_run("S1", 0, 10, bad, schedules())], init=True))
    failed = e.expect("failed")
    assert failed.task_id == 1
    assert failed.message == "ValueError: boom at step 3"
    assert failed.reason == "trainer"
    assert "Traceback" in failed.detail and "trainers.py" in failed.detail
    session.task(run_task(2, [stage_run("S2", 3, 10, bad, schedules())], memory=""))
    assert "holds no state" in e.expect("failed").message
    # The process lives on and serves the next task.
    session.task(run_task(3, [stage_run("S1", 0, 4, PARAMS, schedules())], init=True))
    e.expect("progress")
    assert exact(e.expect("done").metrics) == exact(local([(0, 4)]).evaluate())
    assert session.proc.poll() is None


def test_bad_protocol_input_fails_the_task(session: Session) -> None:
    e = session.engine
    session.welcome()
    # Steps out of order within a task.
    runs = [stage_run("S1", 0, 5, PARAMS, schedules()), stage_run("S2", 6, 8, PARAMS, schedules())]
    session.task(run_task(1, runs, init=True))
    assert "start where runs[0] ends" in e.expect("failed").message
    # No restore source.
    session.task(run_task(2, [stage_run("S1", 0, 5, PARAMS, schedules())]))
    assert "no source" in e.expect("failed").message
    # Memory restore at the wrong step.
    session.task(run_task(3, [stage_run("S1", 0, 5, PARAMS, schedules())], init=True))
    e.expect("progress")
    e.expect("done")
    session.task(run_task(4, [stage_run("S9", 7, 9, PARAMS, schedules())], memory=""))
    assert "state is at step 5" in e.expect("failed").message


def test_cancel_stops_the_running_task_and_drops_state(session: Session) -> None:
    e = session.engine
    session.welcome()
    slow = {**PARAMS, "sleep": 0.02}
    session.task(run_task(7, [stage_run("S1", 0, 100_000, slow, schedules())], init=True))
    e.wait_heartbeat(7)  # it is running
    e.send(cancel=session.engine_pb().CancelTask(task_id=7))
    e.wait_heartbeat(0, timeout=5)  # idle again, soon
    session.task(run_task(8, [stage_run("S2", 5, 10, slow, schedules())], memory=""))
    failed = e.expect("failed")  # nothing from task 7 came in between
    assert failed.task_id == 8 and "holds no state" in failed.message
    session.task(run_task(9, [stage_run("S1", 0, 3, PARAMS, schedules())], init=True))
    e.expect("progress")
    assert e.expect("done").task_id == 9


def test_shutdown_cancels_the_running_task_and_exits_zero_quickly(session: Session) -> None:
    # Shutdown does not wait for the running task: it is cancelled (no result), the
    # queued one never starts, and the process ends with status 0 within seconds.
    e = session.engine
    session.welcome()
    slow = {**PARAMS, "sleep": 0.02}
    session.task(run_task(1, [stage_run("S1", 0, 100_000, slow, schedules())], init=True))
    session.task(run_task(2, [stage_run("S2", 25, 30, slow, schedules())], memory=""))
    e.wait_heartbeat(1)
    e.send(shutdown=session.engine_pb().Shutdown(reason="bye"))
    t0 = time.monotonic()
    code, err = session.wait_exit(timeout=10)
    assert time.monotonic() - t0 < 3.0
    assert code == 0, err
    assert err == ""
    msg = e.next(timeout=5)  # no result for task 1, task 2 never started: the stream ends
    assert msg is None, msg


def test_shutdown_while_the_trainer_is_blocked_exits_zero_within_seconds(
    session: Session,
) -> None:
    e = session.engine
    session.welcome()
    stuck = {**PARAMS, "block": 60}
    session.task(run_task(1, [stage_run("S1", 0, 5, stuck, schedules())], init=True))
    e.wait_heartbeat(1)
    e.send(shutdown=session.engine_pb().Shutdown(reason="bye"))
    t0 = time.monotonic()
    code, err = session.wait_exit(timeout=15)
    assert time.monotonic() - t0 < 5.0
    assert code == 0, err
    assert "task 1 did not stop within 2 s" in err
    for msg in iter(lambda: e.next(timeout=5), None):
        assert msg.WhichOneof("body") not in ("done", "failed"), msg


def test_engine_gone_exits_non_zero_with_one_line(session: Session) -> None:
    session.welcome()
    session.engine.wait_heartbeat(0)
    session.engine.server.stop(grace=None)
    code, err = session.wait_exit()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stagetree worker w-test: lost the engine at 127.0.0.1:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_engine(tmp_path: Path) -> None:
    env = worker_env(f"127.0.0.1:{_free_port()}", STAGETREE_CONNECT_TIMEOUT="1")
    proc = start_worker(env)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.strip() == (
        f"stagetree worker w-test: cannot reach the engine at {env['STAGETREE_ENGINE']} within 1 s"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"STAGETREE_TRAINER": ""},
            "STAGETREE_TRAINER: expected the trainer class as module:Class",
        ),
        ({"STAGETREE_TRAINER": "nosuchmodule:X"}, "cannot import module 'nosuchmodule'"),
        ({"STAGETREE_TRAINER": "trainers:Nope"}, "module 'trainers' has no 'Nope'"),
        ({"STAGETREE_ENGINE": "localhost"}, "STAGETREE_ENGINE: expected host:port"),
        ({"STAGETREE_ENGINE": "unix:"}, "STAGETREE_ENGINE: expected unix:/path"),
        ({"STAGETREE_GPU_SHARE": "1.5"}, "STAGETREE_GPU_SHARE: expected a number in (0, 1]"),
        ({"STAGETREE_CHUNK_SECONDS": "0"}, "STAGETREE_CHUNK_SECONDS: expected seconds > 0"),
        ({"STAGETREE_CHUNK_SECONDS": "soon"}, "STAGETREE_CHUNK_SECONDS: expected seconds > 0"),
        ({"STAGETREE_TRAINER": "trainers:Unconstructible"}, "cannot construct the trainer"),
    ],
)
def test_configuration_errors_exit_2(change: dict[str, str], message: str) -> None:
    env = worker_env(f"127.0.0.1:{_free_port()}", STAGETREE_CONNECT_TIMEOUT="1", **change)
    proc = start_worker(env)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_engine_on_a_unix_socket(tmp_path: Path) -> None:
    engine = FakeEngine(unix_socket=str(tmp_path / "hub.sock"))
    s = Session(engine, start_worker(worker_env(engine.address)), tmp_path / "ckpt")
    try:
        assert engine.address == f"unix:{tmp_path / 'hub.sock'}"
        s.welcome()
        s.task(run_task(1, [stage_run("S1", 0, 3, PARAMS, schedules())], init=True))
        engine.expect("progress")
        assert exact(engine.expect("done").metrics) == exact(local([(0, 3)]).evaluate())
        engine.send(shutdown=s.engine_pb().Shutdown(reason="bye"))
        code, err = s.wait_exit()
        assert code == 0 and err == ""
    finally:
        _end(s)


def test_shutdown_instead_of_welcome(session: Session) -> None:
    session.engine.expect("register")
    session.engine.send(
        shutdown=session.engine_pb().Shutdown(reason="no worker w-test is expected")
    )
    code, err = session.wait_exit()
    assert code == 0
    assert "Shutdown instead of Welcome: no worker w-test is expected" in err


# ---------------------------------------------------------------- hardening


def _start(tmp_path: Path, **env: str) -> Session:
    engine = FakeEngine()
    return Session(engine, start_worker(worker_env(engine.address, **env)), tmp_path / "ckpt")


def _end(s: Session) -> None:
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.communicate()
    s.engine.stop()


def test_secret_is_sent_hidden_from_the_trainer_and_never_printed(session: Session) -> None:
    e = session.engine
    reg = session.welcome(worker_id="w-engine-7")
    assert reg.secret == SECRET and reg.worker_id == "w-test"
    # The trainer (user code) does not see the credential in its environment.
    probe = {**PARAMS, "env_probe": True}
    session.task(run_task(1, [stage_run("S1", 0, 2, probe, schedules())], init=True))
    e.expect("progress")
    assert e.expect("done").metrics["secret_visible"] == 0.0
    # From Welcome on, the worker goes by the id the engine assigned.
    session.task(run_task(2, [stage_run("S2", 9, 10, PARAMS, schedules())], memory="Kx"))
    assert e.expect("failed").message.startswith("worker w-engine-7: restore from memory Kx")
    e.server.stop(grace=None)
    code, out, err = session.wait_exit_out()
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [
        "stagetree worker w-test: the engine knows this worker as w-engine-7",
        lines[1],
    ]
    assert lines[1].startswith("stagetree worker w-engine-7: lost the engine at ")
    assert SECRET not in out + err


def test_missing_secret_is_a_configuration_error() -> None:
    env = worker_env(f"127.0.0.1:{_free_port()}", STAGETREE_WORKER_SECRET="")
    proc = start_worker(env)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert err.strip() == (
        "stagetree worker w-test: STAGETREE_WORKER_SECRET: expected the secret the engine "
        "started this worker with, got nothing (variable not set)"
    )


def test_swapped_and_old_checkpoints_are_recomputed(session: Session) -> None:
    e = session.engine
    session.welcome()
    session.task(
        run_task(1, [stage_run("S1", 0, 4, PARAMS, schedules())], init=True, save_after="K4")
    )
    e.expect("progress")
    e.expect("done")
    session.task(
        run_task(2, [stage_run("S2", 4, 8, PARAMS, schedules())], memory="K4", save_after="K8")
    )
    e.expect("progress")
    e.expect("done")
    k4, k8 = session.ckpt / "K4.ckpt", session.ckpt / "K8.ckpt"
    b4, b8 = k4.read_bytes(), k8.read_bytes()
    k4.write_bytes(b8)
    k8.write_bytes(b4)
    # Each file is a valid checkpoint, of the other key: refused, reason "checkpoint".
    session.task(run_task(3, [stage_run("S2", 4, 8, PARAMS, schedules())], checkpoint="K4"))
    failed = e.expect("failed")
    assert failed.reason == "checkpoint" and "checksum mismatch" in failed.message
    assert str(k4) in failed.message
    # A file of format 1 is old: corrupt, recomputed.
    payload = local([(0, 4)]).save()
    import hashlib

    k4.write_bytes(OLD_MAGIC + hashlib.sha256(payload).digest() + payload)
    session.task(run_task(4, [stage_run("S2", 4, 8, PARAMS, schedules())], checkpoint="K4"))
    failed = e.expect("failed")
    assert failed.reason == "checkpoint" and "old checkpoint format STCKPT01" in failed.message
    # The right file under the right name loads.
    write_checkpoint(session.ckpt, "K4", payload)
    session.task(run_task(5, [stage_run("S2", 4, 8, PARAMS, schedules())], checkpoint="K4"))
    e.expect("progress")
    assert exact(e.expect("done").metrics) == exact(local([(0, 8)]).evaluate())


def test_full_disk_is_an_environment_failure(session: Session) -> None:
    e = session.engine
    session.welcome()
    full = {**PARAMS, "disk_full": True}
    session.task(
        run_task(1, [stage_run("S1", 0, 3, full, schedules())], init=True, save_after="K3")
    )
    e.expect("progress")
    failed = e.expect("failed")
    assert failed.reason == "environment", failed
    assert failed.message.startswith(
        f"save_after K3: cannot write the checkpoint {session.ckpt / 'K3.ckpt'}: "
    )
    assert "No space left on device [ENOSPC]" in failed.message
    assert list(session.ckpt.iterdir()) == []  # no temporary file left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_checkpoint_folder_is_an_environment_failure(session: Session) -> None:
    e = session.engine
    session.ckpt.mkdir()
    session.ckpt.chmod(0o500)
    try:
        session.welcome()
        session.task(
            run_task(1, [stage_run("S1", 0, 3, PARAMS, schedules())], init=True, save_after="K3")
        )
        e.expect("progress")
        failed = e.expect("failed")
    finally:
        session.ckpt.chmod(0o700)
    assert failed.reason == "environment", failed
    assert str(session.ckpt / "K3.ckpt") in failed.message
    assert "[EACCES]" in failed.message


def test_cancel_while_saving_sends_no_result(session: Session) -> None:
    e = session.engine
    session.welcome()
    slow_save = {**PARAMS, "save_sleep": 1.0}
    session.task(
        run_task(
            1,
            [stage_run("S1", 0, 3, slow_save, schedules())],
            init=True,
            save_after="K3",
            end_key="K3",
        )
    )
    assert e.expect("progress").step == 1  # a task's first chunk: one step
    assert e.expect("progress").step == 3  # the last step is done; it saves now
    e.send(cancel=session.engine_pb().CancelTask(task_id=1))
    e.wait_heartbeat(0, timeout=5)  # only heartbeats: no TaskDone for task 1
    session.task(run_task(2, [stage_run("S2", 3, 5, PARAMS, schedules())], memory="K3"))
    failed = e.expect("failed")  # nothing from task 1 came in between; it holds nothing
    assert failed.task_id == 2 and "holds no state" in failed.message
    e.send(shutdown=session.engine_pb().Shutdown(reason="bye"))
    code, err = session.wait_exit()
    assert code == 0
    assert (
        "stagetree worker w-test: task 1 was cancelled before its result was sent: its "
        "TaskDone is dropped (1 result dropped so far)"
    ) in err


def test_cancel_while_evaluating_sends_no_result(session: Session) -> None:
    e = session.engine
    session.welcome()
    slow_eval = {**PARAMS, "evaluate_sleep": 1.0}
    session.task(run_task(1, [stage_run("S1", 0, 3, slow_eval, schedules())], init=True))
    e.expect("progress")
    e.send(cancel=session.engine_pb().CancelTask(task_id=1))
    e.wait_heartbeat(0, timeout=5)
    session.task(run_task(2, [stage_run("S1", 0, 2, PARAMS, schedules())], init=True))
    e.expect("progress")
    assert e.expect("done").task_id == 2


def test_engine_gone_while_the_trainer_is_blocked_exits_within_seconds(
    session: Session,
) -> None:
    e = session.engine
    session.welcome()
    stuck = {**PARAMS, "block": 60}
    session.task(run_task(1, [stage_run("S1", 0, 5, stuck, schedules())], init=True))
    e.wait_heartbeat(1)
    e.server.stop(0)
    t0 = time.monotonic()
    code, err = session.wait_exit(timeout=15)
    assert time.monotonic() - t0 < 5.0
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stagetree worker w-test: lost the engine at 127.0.0.1:")


def test_engine_process_killed_while_the_trainer_is_blocked(tmp_path: Path) -> None:
    # The real case: the engine's process is SIGKILLed (its connections reset).
    engine = subprocess.Popen(
        [sys.executable, str(PYTHON_DIR / "tests" / "fake_engine.py"), str(tmp_path)],
        env=worker_env("127.0.0.1:1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = None
    try:
        assert engine.stdout is not None
        address = engine.stdout.readline().strip()
        worker = start_worker(worker_env(address))
        assert engine.stdout.readline().strip() == "running"
        engine.kill()
        engine.wait()
        t0 = time.monotonic()
        _, err = worker.communicate(timeout=15)
        assert time.monotonic() - t0 < 5.0
        assert worker.returncode == 1
        assert err.startswith(f"stagetree worker w-test: lost the engine at {address}"), err
        assert len(err.strip().splitlines()) == 1, err
    finally:
        for p in (engine, worker):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()


def _set_subreaper(on: bool) -> bool:
    """Makes this process adopt its orphaned descendants (Linux), so that a test can
    wait for a grandchild whose parent it killed."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    return ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def test_worker_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    # The worker's parent (standing in for the engine) is SIGKILLed while the trainer is
    # blocked in train(); the stream to the (fake) engine stays up. The worker, now an
    # orphan, must notice and exit with status 1 within seconds.
    if not _set_subreaper(True):
        pytest.skip("needs Linux's PR_SET_CHILD_SUBREAPER")
    engine = FakeEngine()
    err_file = tmp_path / "worker.err"
    middle = None
    pid = 0
    try:
        with err_file.open("w") as err_fd:
            middle = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import subprocess, sys\n"
                    "p = subprocess.Popen([sys.executable, '-m', 'stagetree.worker'])\n"
                    "print(p.pid, flush=True)\n"
                    "p.wait()\n",
                ],
                env=worker_env(engine.address),
                cwd=str(PYTHON_DIR),
                stdout=subprocess.PIPE,
                stderr=err_fd,
                text=True,
            )
        assert middle.stdout is not None
        pid = int(middle.stdout.readline())
        s = Session(engine, middle, tmp_path / "ckpt")
        s.welcome()
        stuck = {**PARAMS, "block": 60}
        s.task(run_task(1, [stage_run("S1", 0, 5, stuck, schedules())], init=True))
        engine.wait_heartbeat(1)
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        t0 = time.monotonic()
        status = None
        while time.monotonic() - t0 < 10:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the orphaned worker did not exit")
        elapsed = time.monotonic() - t0
        pid = 0
        assert elapsed < 5.0
        assert os.waitstatus_to_exitcode(status) == 1
        err = err_file.read_text()
        assert "lost the engine: the parent process" in err, err
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if middle is not None and middle.poll() is None:
            middle.kill()
            middle.wait()
        _set_subreaper(False)
        engine.stop()


def test_output_is_flushed_before_a_forced_exit(tmp_path: Path) -> None:
    # Without PYTHONUNBUFFERED, what the trainer printed (no newline, and through the C
    # library) sits in buffers when the worker ends with os._exit: it must come out.
    env = {k: v for k, v in worker_env("127.0.0.1:1").items() if k != "PYTHONUNBUFFERED"}
    engine = FakeEngine()
    env["STAGETREE_ENGINE"] = engine.address
    s = Session(engine, start_worker(env), tmp_path / "ckpt")
    try:
        s.welcome()
        loud = {**PARAMS, "block": 60, "print": "from python", "print_c": "from C"}
        s.task(run_task(1, [stage_run("S1", 0, 5, loud, schedules())], init=True))
        engine.wait_heartbeat(1)
        time.sleep(0.2)  # it prints, then blocks
        engine.server.stop(0)
        code, out, err = s.wait_exit_out(timeout=15)
        assert code == 1, err
        assert "from python" in out and "from C" in out, out
    finally:
        _end(s)


def test_oversized_task_done_becomes_task_failed(session: Session) -> None:
    e = session.engine
    session.welcome()
    many = {**PARAMS, "metrics": 300_000}
    session.task(run_task(1, [stage_run("S1", 0, 2, many, schedules())], init=True))
    e.expect("progress")
    failed = e.expect("failed", timeout=30)
    assert failed.reason == "trainer"
    assert failed.message.startswith("message of ")
    n = int(failed.message.split()[2])
    assert n > MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    assert failed.message.startswith(
        f"message of {n} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
    )
    assert "evaluate() returned 300002 metrics" in failed.message
    # The stream survived: the worker serves the next task.
    session.task(run_task(2, [stage_run("S1", 0, 2, PARAMS, schedules())], init=True))
    e.expect("progress")
    assert e.expect("done").task_id == 2


def test_huge_error_messages_are_cut(session: Session) -> None:
    e = session.engine
    session.welcome()
    huge = {**PARAMS, "huge_error": 8_000_000}
    session.task(run_task(1, [stage_run("S1", 0, 2, huge, schedules())], init=True))
    failed = e.expect("failed", timeout=30)
    assert failed.reason == "trainer"
    full = "RuntimeError: " + "x" * 8_000_000
    note = " [... 7995947 characters cut]"  # 4096 characters in all, the note included
    assert len(full) - (4096 - len(note)) == 7995947
    assert failed.message == full[: 4096 - len(note)] + note
    assert len(failed.detail) == 65536 and failed.detail.startswith("Traceback")
    assert failed.detail.endswith(" characters cut]")
    session.task(run_task(2, [stage_run("S1", 0, 2, PARAMS, schedules())], init=True))
    e.expect("progress")
    assert e.expect("done").task_id == 2


def test_nan_and_infinite_metrics_are_sent(session: Session) -> None:
    e = session.engine
    session.welcome()
    diverged = {**PARAMS, "nonfinite": True}
    session.task(run_task(1, [stage_run("S1", 0, 2, diverged, schedules())], init=True))
    e.expect("progress")
    m = e.expect("done").metrics
    assert math.isnan(m["nan"]) and m["up"] == math.inf and m["down"] == -math.inf


def test_traceback_in_detail_and_seconds_by_phase(session: Session) -> None:
    e = session.engine
    session.welcome()
    timed = {
        **PARAMS,
        "init_sleep": 0.2,
        "sleep": 0.05,
        "save_sleep": 0.2,
        "evaluate_sleep": 0.2,
        "load_sleep": 0.2,
    }
    session.task(
        run_task(1, [stage_run("S1", 0, 4, timed, schedules())], init=True, save_after="K4")
    )
    e.expect("progress")
    done = e.expect("done")
    sec = done.seconds
    assert set(sec) == {"start", "init", "load", "save", "train", "evaluate"}
    assert sec["start"] > 0
    assert 0.2 <= sec["init"] < 1.5 and 0.2 <= sec["train"] < 1.5
    assert 0.2 <= sec["save"] < 1.5 and 0.2 <= sec["evaluate"] < 1.5
    assert sec["load"] == 0.0
    session.task(run_task(2, [stage_run("S2", 4, 5, timed, schedules())], checkpoint="K4"))
    e.expect("progress")
    sec = e.expect("done").seconds
    assert sec["start"] == 0.0 and sec["init"] == 0.0  # same params: no init before load
    assert 0.2 <= sec["load"] < 1.5
    # A trainer error: its traceback, with the trainer's own frame, is the detail.
    bad = {**PARAMS, "fail_at": 1}
    session.task(run_task(3, [stage_run("S1", 0, 3, bad, schedules())], init=True))
    failed = e.expect("failed")
    assert failed.message == "ValueError: boom at step 1"
    assert failed.detail.startswith("Traceback (most recent call last):")
    assert 'trainers.py", line' in failed.detail and "in train" in failed.detail
    assert failed.detail.rstrip().endswith("ValueError: boom at step 1")


# ---------------------------------------------------------------- chunks and cuts


def test_chunk_steps() -> None:
    assert CHUNK_SECONDS == 10.0  # the TypeScript runtime's too
    assert _chunk_steps(None, 500) == 1  # nothing measured yet: one step
    assert _chunk_steps(0.0, 500) == 500  # too fast to measure: the rest of the run
    assert _chunk_steps(0.3, 500) == 33  # floor(10 / 0.3)
    assert _chunk_steps(0.3, 500, 1.0) == 3  # floor(1 / 0.3)
    assert _chunk_steps(0.01, 500, 1.0) == 100
    assert _chunk_steps(0.01, 40, 1.0) == 40  # never past the run's end
    assert _chunk_steps(5.0, 500, 1.0) == 1  # a step slower than a chunk: one step
    assert _chunk_steps(1e-300, 7) == 7  # no huge floor() of a tiny pace


def test_chunk_seconds_from_the_environment() -> None:
    env = {
        "STAGETREE_ENGINE": "127.0.0.1:1",
        "STAGETREE_WORKER_ID": "w",
        "STAGETREE_WORKER_SECRET": "s",
        "STAGETREE_TRAINER": "m:C",
    }
    assert config_from_env(env).chunk_seconds == CHUNK_SECONDS
    assert config_from_env({**env, "STAGETREE_CHUNK_SECONDS": ""}).chunk_seconds == 10.0
    assert config_from_env({**env, "STAGETREE_CHUNK_SECONDS": "0.25"}).chunk_seconds == 0.25
    bad = 0
    for value in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(ConfigError, match="STAGETREE_CHUNK_SECONDS: expected seconds > 0"):
            config_from_env({**env, "STAGETREE_CHUNK_SECONDS": value})
        bad += 1
    assert bad == 5


def test_runs_are_trained_in_chunks_sized_by_the_pace(session: Session) -> None:
    e = session.engine
    session.welcome()
    # Fast steps: a task's first chunk is one step, the rest of the run one chunk.
    session.task(
        run_task(1, [stage_run("S1", 0, 50, PARAMS, schedules())], init=True, end_key="K50")
    )
    steps, done = e.progress_then(1, "done")
    assert steps == [1, 50]
    assert exact(done.metrics) == exact(local([(0, 50)]).evaluate())
    # Each task measures its own pace: one step first again.
    session.task(
        run_task(2, [stage_run("S2", 50, 80, PARAMS, schedules())], memory="K50", end_key="K80")
    )
    steps, done = e.progress_then(2, "done")
    assert steps == [51, 80]
    assert exact(done.metrics) == exact(local([(0, 80)]).evaluate())
    # 60 steps of 20 ms fit in one chunk of the default 10 s.
    slow = {**PARAMS, "stepDelayMs": 20}
    session.task(run_task(3, [stage_run("S1", 0, 60, slow, schedules())], init=True))
    steps, done = e.progress_then(3, "done")
    assert steps == [1, 60]
    assert exact(done.metrics) == exact(local([(0, 60)]).evaluate())


def test_chunks_of_slow_steps_give_what_one_train_call_gives(chunked: Session) -> None:
    e = chunked.engine
    chunked.welcome()
    slow = {**PARAMS, "stepDelayMs": 30}  # changes no metric
    chunked.task(run_task(1, [stage_run("S1", 0, 60, slow, schedules())], init=True))
    steps, done = e.progress_then(1, "done", timeout=20)
    assert steps[0] == 1 and steps[-1] == 60, steps
    # A step takes at least 30 ms, so a chunk of about a second has at most 33 steps.
    limit = int(CHUNK_SECONDS / 0.030)
    checked = 0
    for a, b in zip(steps, steps[1:]):
        assert 1 <= b - a <= limit, steps
        checked += 1
    assert checked == len(steps) - 1 >= 2  # [0, 1) and at least two more chunks
    assert done.seconds["train"] >= 60 * 0.030
    # Bit for bit what one train(0, 60) call gives.
    assert exact(done.metrics) == exact(local([(0, 60)]).evaluate())


def _cut_after_first_chunk(e: FakeEngine, task_id: int, pause: float = 0.1) -> None:
    """Waits for the task's one-step first chunk, then (inside the next chunk) sends
    CutTask."""
    assert e.expect("progress").step == 1
    time.sleep(pause)  # well inside the next chunk, past the boundary check at step 1
    e.send(cut=Session.engine_pb().CutTask(task_id=task_id))


def test_cut_mid_run_saves_where_it_stopped_and_continues_bit_for_bit(
    chunked: Session,
) -> None:
    e = chunked.engine
    pb = chunked.engine_pb()
    chunked.welcome()
    slow = {**PARAMS, "stepDelayMs": 20}
    chunked.task(
        run_task(
            1,
            [stage_run("S1", 0, 100, slow, schedules())],
            init=True,
            save_after="K100",
            end_key="K100",
        )
    )
    _cut_after_first_chunk(e, 1)
    steps, cut = e.progress_then(1, "cut_at")
    step = cut.step
    assert 1 < step < 100
    assert steps == [step]  # the chunk's progress, then CutAt at its end
    e.wait_heartbeat(1)  # it waits for SaveCut, heart-beating
    e.send(save_cut=pb.SaveCut(task_id=1, key="Kcut"))
    steps, done = e.progress_then(1, "done")
    assert steps == []
    assert exact(done.metrics) == exact(local([(0, step)]).evaluate())
    assert done.seconds["save"] > 0
    assert read_checkpoint(chunked.ckpt, "Kcut") == local([(0, step)]).save()
    assert not (chunked.ckpt / "K100.ckpt").exists()  # save_after is not used
    whole = exact(local([(0, 100)]).evaluate())
    # It holds the cut state in memory, known by the cut key: the rest of the run from
    # there is bit for bit the uninterrupted run.
    chunked.task(
        run_task(2, [stage_run("S1b", step, 100, slow, schedules())], memory="Kcut")
    )
    steps, done = e.progress_then(2, "done", timeout=20)
    assert steps[-1] == 100
    assert exact(done.metrics) == whole
    # And so it is from the checkpoint.
    chunked.task(
        run_task(3, [stage_run("S1b", step, 100, slow, schedules())], checkpoint="Kcut")
    )
    steps, done = e.progress_then(3, "done", timeout=20)
    assert steps[-1] == 100
    assert exact(done.metrics) == whole
    assert done.seconds["load"] > 0


def test_cut_in_the_last_chunk_finishes_the_task(chunked: Session) -> None:
    e = chunked.engine
    pb = chunked.engine_pb()
    chunked.welcome()
    slow = {**PARAMS, "stepDelayMs": 100}
    chunked.task(
        run_task(
            1,
            [stage_run("S1", 0, 6, slow, schedules())],
            init=True,
            save_after="K6",
            end_key="K6",
        )
    )
    # At 100 ms a step, the rest of the run ([1, 6), 0.5 s) is one chunk: the last.
    _cut_after_first_chunk(e, 1, pause=0.15)
    steps, done = e.progress_then(1, "done")  # no CutAt
    assert steps == [6]
    assert exact(done.metrics) == exact(local([(0, 6)]).evaluate())
    assert read_checkpoint(chunked.ckpt, "K6") == local([(0, 6)]).save()
    # A SaveCut for a task that does not wait for one is ignored.
    e.send(save_cut=pb.SaveCut(task_id=1, key="Kstray"))
    chunked.task(
        run_task(2, [stage_run("S2", 6, 8, slow, schedules())], memory="K6", end_key="K8")
    )
    steps, done = e.progress_then(2, "done")
    assert steps == [7, 8]
    assert exact(done.metrics) == exact(local([(0, 8)]).evaluate())
    assert sorted(p.name for p in chunked.ckpt.iterdir()) == ["K6.ckpt"]


def test_cancel_while_waiting_for_save_cut_drops_the_state(chunked: Session) -> None:
    e = chunked.engine
    pb = chunked.engine_pb()
    chunked.welcome()
    slow = {**PARAMS, "stepDelayMs": 20}
    chunked.task(
        run_task(1, [stage_run("S1", 0, 100, slow, schedules())], init=True, end_key="K100")
    )
    _cut_after_first_chunk(e, 1)
    _, cut = e.progress_then(1, "cut_at")
    e.send(cancel=pb.CancelTask(task_id=1))
    e.wait_heartbeat(0, timeout=5)  # idle, and no result for task 1
    e.send(save_cut=pb.SaveCut(task_id=1, key="Klate"))  # too late: ignored
    chunked.task(
        run_task(2, [stage_run("S1b", cut.step, 100, slow, schedules())], memory="")
    )
    steps, failed = e.progress_then(2, "failed")  # nothing from task 1 in between
    assert steps == []
    assert failed.reason == "worker" and "holds no state" in failed.message
    assert not chunked.ckpt.exists() or list(chunked.ckpt.iterdir()) == []
    # Shutdown while a task waits for SaveCut: no result, status 0, at once.
    chunked.task(run_task(3, [stage_run("S1", 0, 1000, slow, schedules())], init=True))
    _cut_after_first_chunk(e, 3)
    e.progress_then(3, "cut_at")
    e.send(shutdown=pb.Shutdown(reason="bye"))
    t0 = time.monotonic()
    code, err = chunked.wait_exit(timeout=10)
    assert time.monotonic() - t0 < 3.0
    assert code == 0 and err == "", err
    msg = e.next(timeout=5)
    assert msg is None, msg  # no TaskDone for task 3: the stream ends


def test_cut_during_a_recomputation_lands_in_the_last_run(chunked: Session) -> None:
    e = chunked.engine
    pb = chunked.engine_pb()
    chunked.welcome()
    slow = {**PARAMS, "stepDelayMs": 20}
    runs = [stage_run("R", 0, 30, slow, schedules()), stage_run("S", 30, 100, slow, schedules())]
    chunked.task(run_task(1, runs, init=True, save_after="K100", end_key="K100"))
    _cut_after_first_chunk(e, 1)  # during the re-computed run [0, 30)
    steps, cut = e.progress_then(1, "cut_at")
    assert 30 in steps  # the re-computation ran to its end
    assert 30 < cut.step < 100  # and the cut came inside the last run
    assert steps[-1] == cut.step
    e.send(save_cut=pb.SaveCut(task_id=1, key="Kcut"))
    _, done = e.progress_then(1, "done")
    assert exact(done.metrics) == exact(local([(0, cut.step)]).evaluate())
    assert read_checkpoint(chunked.ckpt, "Kcut") == local([(0, cut.step)]).save()
    # The worker holds the cut state as Kcut, not as the task's end key.
    chunked.task(run_task(2, [stage_run("S2", 100, 101, slow, schedules())], memory="K100"))
    failed = e.expect("failed")
    assert failed.task_id == 2 and failed.reason == "worker"
    assert "holds Kcut" in failed.message


def test_cut_for_a_queued_task_applies_when_it_starts(chunked: Session) -> None:
    e = chunked.engine
    pb = chunked.engine_pb()
    chunked.welcome()
    chunked.task(
        run_task(1, [stage_run("S1", 0, 3, {**PARAMS, "stepDelayMs": 100}, schedules())], init=True)
    )
    slow = {**PARAMS, "stepDelayMs": 20}
    chunked.task(run_task(2, [stage_run("S2", 0, 100, slow, schedules())], init=True))
    e.send(cut=pb.CutTask(task_id=2))  # task 2 waits in the queue
    steps, done = e.progress_then(1, "done")
    assert steps == [1, 3]  # task 1 is not cut
    steps, cut = e.progress_then(2, "cut_at")
    assert steps == [1] and cut.step == 1  # the first boundary of task 2: after one step
    e.send(save_cut=pb.SaveCut(task_id=2, key="Kq"))
    _, done = e.progress_then(2, "done")
    assert exact(done.metrics) == exact(local([(0, cut.step)]).evaluate())
