"""Tasks through REAL Celery worker processes (never eager mode), embedded (filesystem broker + SQLite) and
distributed (Redis + PostgreSQL): a run succeeds, running and queued runs are cancelled, and a worker killed with
SIGKILL mid-run loses nothing: the reaper requeues the run, a new worker resumes it from its checkpoint, and no
metric step is missing or doubled; a worker stopped with SIGTERM preempts its run (checkpoint, queued again, re-sent)
and exits at once, and the next worker resumes it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from api.services.queue import TaskQueue
from api.services.workers import list_workers
from store import checkpoints, lifecycle, metrics, runs, teams
from store.models import Run
from store.session import make_sessionmaker
from worker.celery_app import create_celery_app, enqueue_run
from worker.launch import start_worker_process
from worker.settings import WorkerSettings

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
KEY = "reward/total/mean"
READY_TIMEOUT = 120  # seconds for a worker process to import torch and answer a ping on a busy 2-core machine


@dataclass
class Stack:
    settings: WorkerSettings
    log_dir: Path
    team_id: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = create_celery_app(self.settings)
        self.sessions = make_sessionmaker(self.settings.DATABASE_URL)
        with self.sessions() as s:
            self.team_id = teams.create_team(s, name=f"celery-{uuid.uuid4().hex[:6]}").id

    def start_worker(self) -> tuple[subprocess.Popen, str]:
        name = f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}@test"
        proc = start_worker_process(self.settings, name=name, log_file=self.log_dir / f"{name}.log")
        self.procs.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"worker exited early:\n{self.logs()}"
            if self.app.control.ping(destination=[name], timeout=0.5):
                return proc, name
        raise AssertionError(f"worker {name} never answered a ping:\n{self.logs()}")

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)  # the worker, its job child and its reaper: the whole process group
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def submit(self, config: dict, **kw) -> int:
        with self.sessions() as s:
            run = runs.create_run(s, team_id=self.team_id, config=config, **kw)
        enqueue_run(run.id, run.kind, attempt=run.attempt, celery_app=self.app)  # after the commit, as the API does
        return run.id

    def run(self, run_id: int) -> Run:
        with self.sessions() as s:
            return runs.get_run(s, run_id=run_id)

    def wait(self, run_id: int, until: Callable[[Run], bool], timeout: float = 180, what: str = "") -> Run:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if until(run):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} never became {what}: {self.run(run_id).status}\n{self.logs()}")

    def steps(self, run_id: int) -> list[int]:
        with self.sessions() as s:
            return [p.step for p in metrics.read_points(s, run_id=run_id, keys=[KEY])]

    def events(self, run_id: int) -> list[str]:
        with self.sessions() as s:
            return [e.message for e in runs.list_events(s, run_id=run_id)]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)  # nothing to save: the test database and folders are thrown away
        self.sessions.kw["bind"].dispose()


@pytest.fixture(params=["embedded", "distributed"])
def stack(request, tmp_path) -> Iterator[Stack]:
    if request.param == "embedded":
        db_url, broker_url = request.getfixturevalue("sqlite_url"), "filesystem://"
    else:
        db_url, broker_url = request.getfixturevalue("make_pg_schema")(), request.getfixturevalue("redis_url")
    settings = WorkerSettings(
        DATA_DIR=tmp_path / "data",
        DATABASE_URL=db_url,
        BROKER_URL=broker_url,
        WORKER_DEVICE="cpu",
        WORKER_HEARTBEAT_SECONDS=0.5,
        RUN_STALE_AFTER_SECONDS=4,
        REAPER_INTERVAL_SECONDS=0.5,
        BROKER_POLL_SECONDS=0.2,
    )
    (tmp_path / "logs").mkdir()
    stack = Stack(settings=settings, log_dir=tmp_path / "logs")
    yield stack
    stack.close()
    if request.param == "distributed":
        import redis

        client = redis.Redis.from_url(broker_url)
        for key in client.scan_iter():
            if key != b"flowdppo:tests:lock":
                client.delete(key)


def test_run_succeeds_and_cancels_take_effect(stack, tiny_config):
    _proc, name = stack.start_worker()
    ok = stack.submit(tiny_config(steps=3))
    done = stack.wait(ok, lambda r: r.status not in ("queued", "running"), what="finished")
    assert (done.status, done.worker, done.attempt) == ("succeeded", name, 1), stack.logs()
    assert stack.steps(ok) == [1, 2, 3]

    long = stack.submit(tiny_config(steps=500, sample_every=0, checkpoint_every=0))
    queued = stack.submit(tiny_config(steps=3))  # behind `long` on a concurrency-1 worker
    with stack.sessions() as s:
        assert lifecycle.request_cancel(s, run_id=queued).status == "cancelled"
    stack.wait(long, lambda r: r.status == "running" and r.step >= 1, what="running")
    with stack.sessions() as s:
        team_id = runs.get_run(s, run_id=long).team_id
        workers = {w.name: w for w in list_workers(s, queue=TaskQueue(stack.app), team_id=team_id, timeout=2.0)}
    assert workers[name].online and workers[name].run_ids == [long] and "train" in workers[name].queues
    with stack.sessions() as s:
        at_cancel = lifecycle.request_cancel(s, run_id=long).step
    cancelled = stack.wait(long, lambda r: r.status != "running", timeout=60, what="cancelled")
    assert cancelled.status == "cancelled"
    assert max(stack.steps(long)) <= at_cancel + 1  # within one step
    time.sleep(2)  # the queued run's message is delivered now; its job must skip it
    skipped = stack.run(queued)
    assert (skipped.status, skipped.started_at, skipped.worker) == ("cancelled", None, None)
    assert stack.steps(queued) == []


def test_killed_worker_run_resumes_from_checkpoint(stack, tiny_config):
    first, _ = stack.start_worker()
    total = 12
    run_id = stack.submit(tiny_config(steps=total, sample_every=0, checkpoint_every=2))

    def has_checkpoint(run: Run) -> bool:
        with stack.sessions() as s:
            return checkpoints.latest_checkpoint(s, run_id=run_id) is not None

    stack.wait(run_id, has_checkpoint, what="checkpointed")
    stack.kill(first)  # SIGKILL: no ack, no status update, the heartbeat just stops
    lost = stack.run(run_id)
    assert lost.status == "running" and lost.step < total, "the run finished before the kill; make it longer"

    _, second = stack.start_worker()  # its reaper requeues the run once the heartbeat is 4 s old
    done = stack.wait(run_id, lambda r: r.status not in ("queued", "running"), timeout=240, what="finished")
    assert (done.status, done.attempt, done.worker) == ("succeeded", 2, second), stack.logs()
    assert stack.steps(run_id) == list(range(1, total + 1))  # nothing missing, nothing doubled
    events = stack.events(run_id)
    assert any("requeued, attempt 2/3" in e for e in events), events
    assert any(e.startswith("resuming from checkpoint") for e in events), events


def test_sigterm_preempts_the_run_and_a_new_worker_resumes_it(stack, tiny_config, request):
    """A stopped worker (deploy, preemptible node, `docker compose stop`) checkpoints its run after the current step,
    queues it again and exits at once, instead of training to the end; the next worker resumes from that checkpoint.

    Embedded: SIGTERM to the whole process group, as embedded.py and Ctrl-C do (the pool child gets it too).
    Distributed: SIGTERM to the worker's main process alone, as docker's init does (it forwards it to the child)."""
    first, name = stack.start_worker()
    total = 12
    # No periodic checkpoints: the one the second worker resumes from is the preemption's.
    run_id = stack.submit(tiny_config(steps=total, sample_every=0, checkpoint_every=0))
    stack.wait(run_id, lambda r: r.status == "running" and r.step >= 2, what="running")

    started = time.monotonic()
    whole_group = "embedded" in request.node.callspec.id
    if whole_group:
        os.killpg(first.pid, signal.SIGTERM)
    else:
        first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    stopped_in = time.monotonic() - started
    preempted = stack.run(run_id)
    assert first.returncode == 0, stack.logs()
    # Well before the run would end (9+ more steps); the filesystem transport adds a few seconds to the shutdown.
    assert stopped_in < 20, f"the worker took {stopped_in:.1f} s to stop:\n{stack.logs()}"
    assert (preempted.status, preempted.worker, preempted.attempt) == ("queued", None, 2), stack.logs()
    assert preempted.step < total, "the run finished before the stop; make it longer"
    with stack.sessions() as s:
        checkpoint = checkpoints.latest_checkpoint(s, run_id=run_id)
    assert checkpoint is not None and checkpoint.step == preempted.step == max(stack.steps(run_id))
    assert any(e.startswith("preempted: worker shutting down") for e in stack.events(run_id)), stack.events(run_id)

    _, second = stack.start_worker()  # the job was re-sent: no reaper, no visibility timeout to wait for
    done = stack.wait(run_id, lambda r: r.status not in ("queued", "running"), what="finished")
    assert (done.status, done.attempt, done.worker) == ("succeeded", 2, second), stack.logs()
    assert stack.steps(run_id) == list(range(1, total + 1))  # nothing missing, nothing doubled
    resumed = [e for e in stack.events(run_id) if e.startswith("resuming from checkpoint")]
    assert len(resumed) == 1 and resumed[0].endswith(f"step_{checkpoint.step:06d}"), stack.events(run_id)


def _pool_children(pid: int) -> list[int]:
    """The prefork pool's processes of worker `pid` (its children but the reaper beside it)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"worker.reaper" not in cmdline:
            children.append(int(stat.parent.name))
    return children


def test_killed_pool_process_is_requeued_by_its_worker_in_seconds(stack, tiny_config):
    """kill -9 of the worker's pool child (the OOM killer, a segfault): the worker's main process requeues the run
    within seconds, not the reaper (its stale limit is 10 minutes here), and a new child resumes it from its
    checkpoint with no metric step missing or doubled."""
    stack.settings = stack.settings.model_copy(update={"RUN_STALE_AFTER_SECONDS": 600})
    proc, name = stack.start_worker()
    total = 12
    run_id = stack.submit(tiny_config(steps=total, sample_every=0, checkpoint_every=2))

    def has_checkpoint(run: Run) -> bool:
        with stack.sessions() as s:
            return checkpoints.latest_checkpoint(s, run_id=run_id) is not None

    stack.wait(run_id, has_checkpoint, what="checkpointed")
    (child,) = _pool_children(proc.pid)
    killed = time.monotonic()
    os.kill(child, signal.SIGKILL)
    requeued = stack.wait(run_id, lambda r: r.attempt == 2, timeout=10, what="requeued within 10 s")
    requeued_s = time.monotonic() - killed
    assert requeued.status in ("queued", "running") and requeued.step < total, "make the run longer"
    stack.wait(run_id, lambda r: r.attempt == 2 and r.status == "running", timeout=30, what="running attempt 2")
    running_s = time.monotonic() - killed

    def resuming(_run: Run) -> bool:
        return any(e.startswith("resuming from checkpoint") for e in stack.events(run_id))

    stack.wait(run_id, resuming, timeout=60, what="resuming from its checkpoint")
    log.info(
        "kill -9 -> requeued %.1f s, attempt 2 running %.1f s, resuming from its checkpoint %.1f s",
        requeued_s,
        running_s,
        time.monotonic() - killed,
    )

    done = stack.wait(run_id, lambda r: r.status not in ("queued", "running"), what="finished")
    assert (done.status, done.attempt, done.worker) == ("succeeded", 2, name), stack.logs()
    assert stack.steps(run_id) == list(range(1, total + 1))  # nothing missing, nothing doubled
    events = stack.events(run_id)
    assert any(f"its job process on {name} died" in e and "requeued, attempt 2/3" in e for e in events), events
    assert any(e.startswith("resuming from checkpoint") for e in events), events


def _lose_the_queue(stack: Stack) -> None:
    """The broker loses every message, as a Redis restarted empty does (here: this test's own Redis database, all
    keys but the fixture's lock; filesystem: the message files)."""
    if stack.settings.BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(stack.settings.BROKER_URL)
        for key in client.scan_iter():
            if key != b"flowdppo:tests:lock":
                client.delete(key)
    else:
        for path in (stack.settings.broker_folder / "out").glob("*.msg"):
            path.unlink()


def test_a_queued_run_whose_message_the_broker_lost_is_sent_again_and_runs_once(stack, tiny_config):
    """One run training, one queued behind it; the broker loses its queue: the running run finishes, and the queued
    one is sent again by the reaper (it is queued in the database with no message) and runs exactly once."""
    stack.settings = stack.settings.model_copy(update={"BROKER_RESEND_AFTER_SECONDS": 2})
    _proc, name = stack.start_worker()
    training = stack.submit(tiny_config(steps=8, sample_every=0, checkpoint_every=0))
    queued = stack.submit(tiny_config(steps=3, sample_every=0, checkpoint_every=0))
    stack.wait(training, lambda r: r.status == "running" and r.step >= 1, what="running")
    assert stack.run(queued).status == "queued"
    _lose_the_queue(stack)

    first = stack.wait(training, lambda r: r.status not in ("queued", "running"), what="finished")
    second = stack.wait(queued, lambda r: r.status not in ("queued", "running"), what="finished")
    assert (first.status, first.attempt) == ("succeeded", 1), stack.logs()
    assert (second.status, second.attempt, second.worker) == ("succeeded", 1, name), stack.logs()
    assert stack.steps(queued) == [1, 2, 3]
    events = stack.events(queued)
    assert sum(e.startswith("re-sent: queued with no job") for e in events) >= 1, events
    assert sum(e.startswith("started on") for e in events) == 1, events  # run once, whatever was sent twice
