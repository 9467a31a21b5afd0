"""A run of 2 gloo ranks through a REAL Celery worker that hosts 2 ranks (spec §12, platform.md "Runs on several
GPUs"): it succeeds with its metrics once per step; a cancel stops both ranks on one step; a rank killed with SIGKILL
ends the attempt, the run is requeued, and the next attempt resumes from its checkpoint with no step lost or doubled;
a run of more ranks than the worker hosts is sent on to its own queue, with an event saying why."""

# ruff: noqa: F811 - `stack` is the imported fixture
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from store import artifacts, checkpoints
from store.broker import train_queue
from store.models import Run
from tests.worker.test_celery import Stack, stack  # noqa: F401 - the embedded/distributed stacks
from worker.launch import start_worker_process

pytestmark = pytest.mark.slow
READY_TIMEOUT = 120


def start_rank_worker(stack: Stack, ranks: int = 2):
    """A worker hosting `ranks` gloo ranks: it takes the plain train queue and train-w2 ... train-w<ranks>."""
    name = f"r{len(stack.procs)}-{uuid.uuid4().hex[:6]}@test"
    queues = ("train", *(train_queue(w) for w in range(2, ranks + 1)), "eval")
    env = {"WORKER_RANKS": str(ranks), "FLOWDPPO_RANK_THREADS": "1", "FLOWDPPO_COLLECTIVE_TIMEOUT_S": "20"}
    proc = start_worker_process(
        stack.settings, name=name, queues=queues, log_file=stack.log_dir / f"{name}.log", extra_env=env
    )
    stack.procs.append(proc)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited early:\n{stack.logs()}"
        if stack.app.control.ping(destination=[name], timeout=0.5):
            return proc, name
    raise AssertionError(f"worker {name} never answered a ping:\n{stack.logs()}")


def submit(stack: Stack, config: dict) -> int:
    """As the API does: to the queue of the run's rank count (store.broker.run_queue)."""
    from store import runs
    from store.broker import run_queue
    from worker.celery_app import enqueue_run

    with stack.sessions() as s:
        run = runs.create_run(s, team_id=stack.team_id, config=config)
    enqueue_run(run.id, run.kind, attempt=run.attempt, celery_app=stack.app, queue=run_queue(run.kind, run.config))
    return run.id


def rank_pids(relay: Path) -> list[int]:
    """The pids of the rank processes (python -m trainer.relay ... RELAY ...) of one run folder, not their torchrun."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"trainer.relay" in cmd and str(relay).encode() in cmd and b"torch.distributed.run" not in cmd:
                pids.append(int(entry.name))
    return pids


def finished(run: Run) -> bool:
    return run.status not in ("queued", "running")


# Embedded only: the cancel is the database's flag and the job's poll, the same on both transports, and a 2-rank run
# through Redis + PostgreSQL succeeding on its train-w2 queue is the second half of the SIGTERM test's distributed one.
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_two_rank_run_succeeds_and_a_cancel_stops_both_ranks(stack, tiny_config):
    _proc, name = start_rank_worker(stack)
    ok = submit(stack, tiny_config(steps=3, num_processes=2))
    done = stack.wait(ok, finished, timeout=240, what="finished")
    assert (done.status, done.worker, done.attempt) == ("succeeded", name, 1), stack.logs()
    assert stack.steps(ok) == [1, 2, 3]  # rank 0's metrics, once per step
    with stack.sessions() as s:
        assert [c.step for c in checkpoints.list_checkpoints(s, run_id=ok)] == [2, 3]

    from store import lifecycle

    long = submit(stack, tiny_config(steps=500, num_processes=2, sample_every=0, checkpoint_every=0))
    stack.wait(long, lambda r: r.status == "running" and r.step >= 1, timeout=240, what="running")
    with stack.sessions() as s:
        lifecycle.request_cancel(s, run_id=long)
    asked = time.monotonic()
    cancelled = stack.wait(long, lambda r: r.status != "running", timeout=120, what="cancelled")
    assert cancelled.status == "cancelled", stack.logs()
    # The job polls the cancel flag every second and rank 0 reads the relay's stop at its next step boundary: a
    # second plus one step (these tiny steps take a fraction of a second, so several may pass meanwhile).
    assert time.monotonic() - asked < 30, stack.logs()
    steps = stack.steps(long)
    assert steps == list(range(1, max(steps) + 1))
    relay = artifacts.run_dir(stack.settings.DATA_DIR, long) / "relay"
    assert not rank_pids(relay), "a rank outlived the cancelled run"
    state = (relay / "result.json").read_text()
    assert '"stopped": true' in state and f'"steps": {max(steps)}' in state  # both ranks stopped on that step


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)  # the same job code as distributed; time
def test_killed_rank_requeues_the_run_and_it_resumes_from_its_checkpoint(stack, tiny_config):
    start_rank_worker(stack)
    total = 10
    run_id = submit(stack, tiny_config(steps=total, num_processes=2, sample_every=0, checkpoint_every=2))

    def checkpointed(run: Run) -> bool:
        with stack.sessions() as s:
            return checkpoints.latest_checkpoint(s, run_id=run_id) is not None

    stack.wait(run_id, checkpointed, timeout=240, what="checkpointed")
    relay = artifacts.run_dir(stack.settings.DATA_DIR, run_id) / "relay"
    pids = rank_pids(relay)
    assert len(pids) == 2, pids
    os.kill(max(pids), signal.SIGKILL)  # one rank (the later started: usually rank 1) dies mid-run
    killed_at = time.monotonic()
    requeued = stack.wait(run_id, lambda r: r.attempt == 2, timeout=60, what="requeued")
    assert time.monotonic() - killed_at < 40  # within the collective timeout (20 s here) and torchrun's stop
    done = stack.wait(run_id, finished, timeout=300, what="finished")
    assert (done.status, done.attempt) == ("succeeded", 2), stack.logs()
    assert requeued.attempt == 2
    assert stack.steps(run_id) == list(range(1, total + 1))  # nothing lost, nothing doubled
    events = stack.events(run_id)
    assert any("a rank died or hung" in e and "requeued, attempt 2" in e for e in events), events
    assert any(e.startswith("resuming from checkpoint") for e in events), events


def test_sigterm_preempts_all_ranks_and_a_new_worker_resumes_the_run(stack, tiny_config, request):
    """A stopped worker (deploy, preemptible node): both ranks checkpoint at one step boundary and exit, the run is
    queued again and re-sent, and the next worker resumes it from that checkpoint."""
    first, _ = start_rank_worker(stack)
    total = 40  # long enough that the stop (SIGTERM -> 1 s poll -> rank 0's next step boundary) lands before the end
    run_id = submit(stack, tiny_config(steps=total, num_processes=2, sample_every=0, checkpoint_every=0))
    stack.wait(run_id, lambda r: r.status == "running" and r.step >= 2, timeout=240, what="running")
    relay = artifacts.run_dir(stack.settings.DATA_DIR, run_id) / "relay"
    if "embedded" in request.node.callspec.id:
        os.killpg(first.pid, signal.SIGTERM)  # the whole group, as embedded.py and Ctrl-C do; torchrun is not in it
    else:
        first.send_signal(signal.SIGTERM)  # the main process alone, as docker's init does
    first.wait(timeout=90)
    preempted = stack.run(run_id)
    assert first.returncode == 0, stack.logs()
    assert (preempted.status, preempted.attempt) == ("queued", 2), stack.logs()
    assert not rank_pids(relay), "a rank outlived its stopped worker"
    with stack.sessions() as s:
        checkpoint = checkpoints.latest_checkpoint(s, run_id=run_id)
    assert checkpoint is not None and checkpoint.step == preempted.step == max(stack.steps(run_id)) < total
    start_rank_worker(stack)
    done = stack.wait(run_id, finished, timeout=300, what="finished")
    assert (done.status, done.attempt) == ("succeeded", 2), stack.logs()
    assert stack.steps(run_id) == list(range(1, total + 1))  # nothing missing, nothing doubled


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)  # the same job code as distributed; time
def test_a_run_of_more_ranks_than_the_worker_hosts_is_sent_on_with_an_event(stack, tiny_config):
    stack.start_worker()  # one rank: it takes 'train' only
    from store import runs
    from worker.celery_app import enqueue_run

    with stack.sessions() as s:
        run = runs.create_run(s, team_id=stack.team_id, config=tiny_config(steps=2, num_processes=2))
    enqueue_run(run.id, run.kind, attempt=run.attempt, celery_app=stack.app)  # the plain queue, as a re-send goes
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("sent on to queue 'train-w2'" in e for e in stack.events(run.id)):
        time.sleep(0.2)
    assert any("sent on to queue 'train-w2'" in e for e in stack.events(run.id)), stack.logs()
    assert stack.run(run.id).status == "queued"  # it waits there for a worker with 2 GPUs or more
