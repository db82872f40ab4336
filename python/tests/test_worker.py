"""The worker runtime against a fake engine (a real grpcio server on 127.0.0.1:0), with
the worker as a real process started like the engine's pool starts it."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from fake_engine import FakeEngine, constant, run_task, stage_run, stair, start_worker, worker_env
from trainers import TestTrainer

from stagetree.checkpoints import read_checkpoint
from stagetree.schedule import Hp, Schedule

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

    def welcome(self, heartbeat: float = 0.05) -> Any:
        reg = self.engine.expect("register")
        self.engine.send(
            welcome=self.engine_pb().Welcome(
                checkpoint_dir=str(self.ckpt), heartbeat_seconds=heartbeat
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
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"the worker did not exit; stderr:\n{err}") from None
        return self.proc.returncode, err


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = FakeEngine()
    proc = start_worker(worker_env(engine.address))
    s = Session(engine, proc, tmp_path / "ckpt")
    try:
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        engine.stop()


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
    assert e.expect("progress").step == 10
    done = e.expect("done")
    assert done.task_id == 1
    assert exact(done.metrics) == exact(local([(0, 10)]).evaluate())
    assert set(done.seconds) == {"start", "init", "save", "load", "train", "evaluate"}
    assert done.seconds["start"] > 0 and done.seconds["init"] > 0 and done.seconds["save"] > 0
    assert read_checkpoint(session.ckpt, "Ka") == local([(0, 10)]).save()

    # 2: continue from memory with [10, 20) = one run [0, 20), bit for bit.
    whole = local([(0, 20)])
    session.task(
        run_task(2, [stage_run("S2", 10, 20, PARAMS, schedules())], memory="Ka", end_key="K20")
    )
    assert e.expect("progress").step == 20
    done = e.expect("done")
    assert done.task_id == 2
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
    assert e.expect("progress").step == 15
    assert e.expect("progress").step == 20
    done = e.expect("done")
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


def test_shutdown_lets_the_running_task_finish_then_exits_zero(session: Session) -> None:
    e = session.engine
    session.welcome()
    slow = {**PARAMS, "sleep": 0.02}
    session.task(run_task(1, [stage_run("S1", 0, 25, slow, schedules())], init=True))
    session.task(run_task(2, [stage_run("S2", 25, 30, slow, schedules())], memory=""))
    e.wait_heartbeat(1)
    e.send(shutdown=session.engine_pb().Shutdown(reason="bye"))
    e.expect("progress")
    assert e.expect("done").task_id == 1
    code, err = session.wait_exit(timeout=10)
    assert code == 0, err
    msg = e.next(timeout=5)  # task 2 never started: the stream just ends
    assert msg is None, msg


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
        ({"STAGETREE_GPU_SHARE": "1.5"}, "STAGETREE_GPU_SHARE: expected a number in (0, 1]"),
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


def test_shutdown_instead_of_welcome(session: Session) -> None:
    session.engine.expect("register")
    session.engine.send(
        shutdown=session.engine_pb().Shutdown(reason="no worker w-test is expected")
    )
    code, err = session.wait_exit()
    assert code == 0
    assert "Shutdown instead of Welcome: no worker w-test is expected" in err
