"""A small fake engine for the worker tests: a real grpcio server on 127.0.0.1:0 that
records what the worker sends and sends what the test tells it to."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from stagetree.gen import worker_pb2 as pb
from stagetree.gen import worker_pb2_grpc as pb_grpc

PYTHON_DIR = Path(__file__).resolve().parent.parent

#: The secret worker_env() hands the worker (STAGETREE_WORKER_SECRET).
SECRET = "test-secret-9f2c51d0e4"


class FakeEngine(pb_grpc.WorkerHubServiceServicer):
    def __init__(self, unix_socket: str | None = None) -> None:
        """Listens on 127.0.0.1 (a free port), or on ``unix_socket`` when given."""
        self.received: queue.Queue[Any] = queue.Queue()
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_WorkerHubServiceServicer_to_server(self, self.server)
        if unix_socket is not None:
            self.address = f"unix:{unix_socket}"
            self.port = self.server.add_insecure_port(self.address)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            self.address = f"127.0.0.1:{self.port}"
        self.server.start()
        self.heartbeats: list[int] = []
        #: (task_id, step) of every Progress that expect() or wait_heartbeat() skipped.
        self.skipped_progress: list[tuple[int, int]] = []

    # grpc handler: one worker stream
    def Connect(self, request_iterator: Any, context: Any) -> Any:
        def pump() -> None:
            try:
                for req in request_iterator:
                    self.received.put(req)
            except Exception:
                pass
            self.received.put(None)
            self.outbox.put(None)  # like the engine's hub: the worker half-closed, end ours

        threading.Thread(target=pump, daemon=True).start()
        while context.is_active():
            try:
                msg = self.outbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if msg is None:
                return
            yield msg

    def send(self, **body: Any) -> None:
        self.outbox.put(pb.ConnectResponse(**body))

    def next(self, timeout: float = 10.0, skip_heartbeats: bool = True) -> Any:
        """The next message from the worker (None: its stream closed)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message from the worker within {timeout} s")
            try:
                msg = self.received.get(timeout=left)
            except queue.Empty:
                continue
            if msg is not None and msg.WhichOneof("body") == "heartbeat":
                self.heartbeats.append(msg.heartbeat.task_id)
                if skip_heartbeats:
                    continue
            return msg

    def _next_by(self, deadline: float, kind: str, timeout: float) -> Any:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind} from the worker within {timeout} s")
        return self.next(left)

    def expect(self, kind: str, timeout: float = 10.0) -> Any:
        """The next message, which must be of ``kind``. Progress messages before it are
        skipped (recorded in ``skipped_progress``) unless ``kind`` is "progress": the
        worker sends one per chunk, and how many chunks a run takes depends on its pace
        (use ``progress_then`` to see them all)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next_by(deadline, kind, timeout)
            assert msg is not None, f"expected {kind}, the worker's stream closed"
            got = msg.WhichOneof("body")
            if got == "progress" and kind != "progress":
                self.skipped_progress.append((msg.progress.task_id, msg.progress.step))
                continue
            assert got == kind, f"expected {kind}, got {got}: {msg}"
            return getattr(msg, kind)

    def progress_then(
        self, task_id: int, kind: str, timeout: float = 10.0
    ) -> tuple[list[int], Any]:
        """The steps of every Progress the worker sends for ``task_id``, then the next
        message of another kind, which must be ``kind`` and for the same task:
        ``(steps, that message's body)``."""
        deadline = time.monotonic() + timeout
        steps: list[int] = []
        while True:
            msg = self._next_by(deadline, kind, timeout)
            assert msg is not None, f"expected {kind} for task {task_id}, the stream closed"
            got = msg.WhichOneof("body")
            body = getattr(msg, got)
            assert body.task_id == task_id, f"expected task {task_id}, got {got}: {msg}"
            if got != "progress":
                assert got == kind, f"expected {kind} (after progress {steps}), got {got}: {msg}"
                return steps, body
            steps.append(body.step)

    def wait_heartbeat(self, task_id: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.next(deadline - time.monotonic(), skip_heartbeats=False)
            assert msg is not None, "the worker's stream closed"
            kind = msg.WhichOneof("body")
            if kind == "heartbeat" and msg.heartbeat.task_id == task_id:
                return
            if kind == "progress":  # a running task's chunks
                self.skipped_progress.append((msg.progress.task_id, msg.progress.step))
                continue
            assert kind == "heartbeat", f"expected only heartbeats, got {kind}: {msg}"
        raise AssertionError(f"no heartbeat for task {task_id} within {timeout} s")

    def stop(self) -> None:
        self.outbox.put(None)
        self.server.stop(grace=None)


def worker_env(engine: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGETREE_")}
    paths = [str(PYTHON_DIR), str(PYTHON_DIR / "tests"), str(PYTHON_DIR / "examples")]
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        STAGETREE_ENGINE=engine,
        STAGETREE_WORKER_ID="w-test",
        STAGETREE_WORKER_SECRET=SECRET,
        STAGETREE_TRAINER="trainers:TestTrainer",
        STAGETREE_GPU_SHARE="0.5",
        CUDA_VISIBLE_DEVICES="0,2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stagetree.worker"],
        env=env,
        cwd=str(PYTHON_DIR),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ------------------------------------------------------------------ messages


def constant(v: float | str) -> Any:
    c = pb.Constant(text=v) if isinstance(v, str) else pb.Constant(number=v)
    return pb.Schedule(segments=[pb.Segment(start=0, piece=pb.Piece(constant=c))])


def stair(init: float, factor: float, every: int) -> Any:
    piece = pb.Piece(stair=pb.Stair(init=init, factor=factor, every=every, origin=0))
    return pb.Schedule(segments=[pb.Segment(start=0, piece=piece)])


def stage_run(
    stage: str, start: int, end: int, params: dict[str, Any], schedules: dict[str, Any]
) -> Any:
    import json

    return pb.StageRun(
        stage_id=stage,
        start=start,
        end=end,
        params_json=json.dumps(params),
        schedules=schedules,
    )


def run_task(
    task_id: int,
    runs: list[Any],
    *,
    init: bool = False,
    memory: str | None = None,
    checkpoint: str | None = None,
    save_first: str = "",
    save_after: str = "",
    end_key: str = "",
) -> Any:
    if init:
        restore = pb.Restore(init=True)
    elif memory is not None:
        restore = pb.Restore(memory=memory)
    elif checkpoint is not None:
        restore = pb.Restore(checkpoint=checkpoint)
    else:
        restore = pb.Restore()
    return pb.RunTask(
        task_id=task_id,
        save_first=save_first,
        restore=restore,
        runs=runs,
        save_after=save_after,
        end_key=end_key,
    )


def _serve_one_blocked_task() -> None:
    """``python fake_engine.py CKPT_DIR``: an engine in its own process (so that a test can
    SIGKILL it): prints its address, welcomes the worker, gives it a task whose trainer
    blocks in train(), prints "running" once the worker heart-beats for it, then waits."""
    engine = FakeEngine()
    print(engine.address, flush=True)
    engine.expect("register", timeout=30)
    engine.send(welcome=pb.Welcome(checkpoint_dir=sys.argv[1], heartbeat_seconds=0.05))
    stuck = {"seed": 1, "dim": 3, "samples": 8, "batch": 2, "block": 60}
    engine.send(run=run_task(1, [stage_run("S1", 0, 5, stuck, {"lr": constant(0.1)})], init=True))
    engine.wait_heartbeat(1)
    print("running", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    _serve_one_blocked_task()
