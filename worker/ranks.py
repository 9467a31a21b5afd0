"""A run of several ranks from a worker (platform.md "Runs on several GPUs", spec §12).

The job starts torchrun as a subprocess in its own session (a Celery prefork child cannot start multiprocessing
children) and stays the run's only store writer: rank 0 relays what its callback reports through a folder
(trainer/relay.py), and this module replays it into the job's StoreCallback, so metrics, samples, checkpoints,
heartbeat, progress and fenced writes behave as for one rank. Cancel and preemption: StoreCallback.should_stop() is
polled here and answered by the relay's stop flag, which rank 0 reads at the step boundary and all ranks agree on;
the ranks then checkpoint and exit. The group is killed when it does not stop in time or the job itself ends.

A rank that dies or hangs ends the attempt (the others fail at a collective, or at the collective timeout), and the
run is requeued as lost: its next attempt resumes from the last checkpoint, with no metric step lost or doubled (the
metrics table is unique on run, key and step). A rank that raised an ordinary error fails the run with that error.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from store import lifecycle, runs
from store.broker import Queue, train_queue
from store.enums import RunStatus
from store.models import Run

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from trainer.callbacks import Callback
    from trainer.config import TrainConfig
    from worker.jobs import JobContext

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # relay replay and should_stop polling
STOP_GRACE_SECONDS = 600.0  # after a stop request the ranks finish their step and checkpoint, or are killed
EXIT_GRACE_SECONDS = 30.0  # rank 0 wrote its result (after the checkpoint and the group's shutdown): exit or be killed
KILL_WAIT_SECONDS = 10.0  # torchrun's own SIGTERM -> SIGKILL escalation for its ranks takes up to 30 s more
RELAY = "relay"


class RanksLost(Exception):
    """The ranks ended without a result and without an error of their own: one died or hung (the attempt is lost)."""


class RanksFailed(Exception):
    """A rank raised: the run's error."""


def torchrun_command(config_path: Path, out_dir: Path, relay: Path, device: str, nproc: int) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    rank = ["-m", "trainer.relay", str(config_path), str(out_dir), str(relay), "--device", device]
    return [sys.executable, *launcher, *rank]


def train_ranks(
    config: TrainConfig,
    callback: Callback,
    *,
    out_dir: Path,
    device: str,
    poll_seconds: float = POLL_SECONDS,
    stop_grace_seconds: float = STOP_GRACE_SECONDS,
) -> bool:
    """Train `config` on config.num_processes local ranks, reporting through `callback`; True when it stopped early.

    Raises RanksFailed (a rank's own error) or RanksLost (a rank died or hung).
    """
    from trainer.relay import PARENT_PID_ENV, RelayReader, die_with_parent  # torch: only where ranks are started

    relay = Path(out_dir) / RELAY
    shutil.rmtree(relay, ignore_errors=True)  # a previous attempt's events were replayed by that attempt
    relay.mkdir(parents=True)
    (relay / "config.json").write_text(config.to_json())
    cmd = torchrun_command(relay / "config.json", Path(out_dir), relay, device, config.num_processes)
    env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
    reader, stop_deadline, exit_deadline = RelayReader(relay), None, None
    with open(relay / "ranks.log", "wb") as output:
        # Own session: the worker's signals do not reach the ranks (a stop goes through the relay); die_with_parent:
        # torchrun is killed with this process, and each rank with torchrun (trainer.relay.main), none orphaned.
        proc = subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=die_with_parent
        )
        try:
            while proc.poll() is None:
                reader.replay(callback)
                if stop_deadline is None and callback.should_stop():
                    reader.request_stop()
                    stop_deadline = time.monotonic() + stop_grace_seconds
                elif stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.warning("ranks did not stop within %.0f s: killing them", stop_grace_seconds)
                    _kill(proc)
                if exit_deadline is None and reader.result() is not None:
                    exit_deadline = time.monotonic() + EXIT_GRACE_SECONDS
                elif exit_deadline is not None and time.monotonic() > exit_deadline:
                    # Seen under load: every rank past its work and the group's shutdown, yet one process never
                    # exits. The run's work is complete (result written after the checkpoint): end the group.
                    log.warning("ranks did not exit %.0f s after their result: killing them", EXIT_GRACE_SECONDS)
                    _kill(proc)
                time.sleep(poll_seconds)
        finally:
            _kill(proc)  # no-op when it exited; the job's own end (an exception here) takes the ranks with it
    reader.replay(callback)
    result = reader.result()
    if result is not None and (proc.returncode == 0 or exit_deadline is not None):
        return bool(result["stopped"])
    own = [e for e in reader.errors() if not e["transient"]]
    if own:
        raise RanksFailed(f"rank {own[0]['rank']}: {own[0]['error']}")
    tail = (relay / "ranks.log").read_text(errors="replace")[-1500:]
    raise RanksLost(f"the ranks ended with exit status {proc.returncode}: a rank died or hung\n--- ranks.log:\n{tail}")


def run_ranks_job(ctx: JobContext, run: Run, config: TrainConfig, callback, out_dir: Path) -> bool:
    """The train job's work for num_processes > 1: the ranks, and a lost attempt requeued (its retry resumes)."""
    try:
        return train_ranks(config, callback, out_dir=out_dir, device=ctx.device)
    except RanksLost as err:
        reason = str(err).splitlines()[0]
        with ctx.session_factory() as session:
            updated = lifecycle.requeue_run(session, run_id=run.id, attempt=run.attempt, reason=reason)
        if updated is not None and updated.status == RunStatus.QUEUED and ctx.enqueue is not None:
            ctx.enqueue(updated.id, updated.kind, updated.attempt)
        callback.owned = False  # the run is no longer this attempt's: the job ends as LOST, writing nothing more
        return True


def forward_queue(run_id: int, session_factory: sessionmaker[Session], capacity: int) -> tuple[str, int] | None:
    """Where to send a training job on when this worker hosts fewer than the run's ranks (a re-send by the reaper or
    a preemption goes to the plain 'train' queue), with the run's attempt (its task id); None = run it here. The run
    gets an event saying where and why."""
    with session_factory() as session:
        run = runs.get_run(session, run_id=run_id)
        if run is None or run.kind != Queue.TRAIN.value:
            return None
        ranks = int(run.config.get("num_processes", 1))
        if ranks <= capacity:
            return None
        queue = train_queue(ranks)
        message = (
            f"needs {ranks} ranks and this worker hosts {capacity}: sent on to queue {queue!r}, which only workers "
            f"with {ranks} GPUs or more take (`flowdppo worker --gpus ...`); it stays queued until one is up"
        )
        runs.add_event(session, run_id=run_id, message=message)
        return queue, run.attempt


def queued_rank_queues(session: Session) -> list[str]:
    """The train-w<W> queues that queued runs of W > 1 ranks wait in (the reaper lists them for lost messages)."""
    ranks = func.coalesce(Run.config["num_processes"].as_integer(), 1)
    counts = session.scalars(
        select(ranks).where(Run.status == RunStatus.QUEUED, Run.kind == Queue.TRAIN.value, ranks > 1).distinct()
    )
    return sorted(train_queue(int(w)) for w in counts)


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun (it stops its ranks), then SIGKILL its session; each rank dies with torchrun."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
