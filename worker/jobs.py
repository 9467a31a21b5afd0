"""The jobs as plain functions: claim the run, build the trainer with a store-backed callback, record the outcome.

No Celery here, so the job semantics (skip finished runs, cancel within one step, resume from the run's latest
checkpoint, heartbeat, fencing off a worker whose run was requeued, preemption when the worker is stopped) are
tested by calling these directly.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from store import artifacts, checkpoints, lifecycle, metrics, runs, samples
from store.enums import FINISHED_STATUSES, RunStatus
from store.models import Run
from trainer.callbacks import Sample
from trainer.config import EvalConfig, TrainConfig, format_validation_error
from worker.lost_messages import Enqueue

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What a job did: a run's final status, or why it ended without one."""

    SUCCEEDED = RunStatus.SUCCEEDED.value
    FAILED = RunStatus.FAILED.value
    CANCELLED = RunStatus.CANCELLED.value
    SKIPPED = "skipped"  # already finished, cancelled before start, or running elsewhere
    LOST = "lost"  # the run was requeued (this worker was presumed dead) or deleted while it ran
    PREEMPTED = "preempted"  # the worker is stopping: checkpointed, the run is queued again and its job re-sent


@dataclass
class JobContext:
    """What a job needs from its worker process."""

    session_factory: sessionmaker[Session]
    data_dir: Path
    worker: str
    device: str = "cpu"
    heartbeat_seconds: float = 15.0
    stale_after: timedelta = field(default_factory=lambda: timedelta(minutes=3))
    # True once the worker process is stopping (worker/shutdown.py): the job stops at its next step boundary,
    # checkpoints, and its run is queued again and re-sent through `enqueue(run_id, kind, attempt)`.
    shutting_down: Callable[[], bool] = lambda: False
    enqueue: Enqueue | None = None
    # The hosts a remote reward may call (REMOTE_REWARD_HOSTS); empty = none. Checked before every request.
    reward_hosts: tuple[str, ...] = ()


class StoreCallback:
    """The trainer's Callback, writing to the database: metrics, sample images + rows, checkpoint rows, liveness.

    Every report is also a heartbeat, and its writes land only while this attempt still runs the run (fenced in
    the database, store.lifecycle.fenced_write); should_stop() is True once a cancel was asked, the run is no longer
    ours, or the worker is shutting down (then `preempted`).
    """

    def __init__(self, ctx: JobContext, run: Run, progress: Callable[[int], float]):
        self.ctx, self.run_id, self.attempt, self.progress = ctx, run.id, run.attempt, progress
        self.session = ctx.session_factory()
        self.owned, self.cancel_requested, self.preempted = True, False, False
        self.samples_logged = 0

    def _beat(self) -> None:
        beat = lifecycle.heartbeat(self.session, run_id=self.run_id, attempt=self.attempt)
        self.owned = self.owned and beat.owned
        self.cancel_requested = self.cancel_requested or beat.cancel_requested

    @contextmanager
    def _fenced(self, step: int | None = None) -> Iterator[Session | None]:
        """A session whose writes land only while this attempt owns the run (store.lifecycle.fenced_write, which also
        records liveness and `step`'s progress); None once another attempt took the run over, then every later
        report is dropped as well."""
        if not self.owned:
            yield None
            return
        progress = None if step is None else self.progress(step)
        with lifecycle.fenced_write(
            self.session, run_id=self.run_id, attempt=self.attempt, step=step, progress=progress
        ) as writes:
            self.owned = writes is not None
            yield writes

    def on_metrics(self, step: int, metrics_: dict[str, float]) -> None:
        with self._fenced(step) as writes:  # the step's heartbeat too; should_stop() reads the cancel flag
            if writes is None:
                return  # a requeued attempt owns the run's rows now
            metrics.append_metrics(writes, run_id=self.run_id, step=step, values=metrics_)

    def on_samples(self, step: int, images: list[Sample]) -> None:
        if not self.owned:
            return
        # The image files are written before the fence, not holding the database's write lock (SQLite) while PNGs
        # encode; a fenced-off attempt may still write a step's files, which the owner rewrites the same (same seed).
        rows = [self._save_sample(step, s) for s in images]
        with self._fenced() as writes:
            if writes is None:
                return
            samples.add_samples(writes, run_id=self.run_id, samples=rows)
        self.samples_logged += len(rows)

    def _save_sample(self, step: int, s: Sample) -> samples.NewSample:
        saved = artifacts.save_sample_image(
            self.ctx.data_dir, run_id=self.run_id, step=step, index=s.index, seed=s.seed, image=s.image
        )
        return samples.NewSample(
            step=step,
            prompt=s.prompt,
            seed=s.seed,
            index=s.index,
            image_path=saved.image_path,
            thumb_path=saved.thumb_path,
            rewards={k: float(v) for k, v in s.rewards.items()},
        )

    def on_checkpoint(self, step: int, path: Path) -> None:
        # Fenced like the rest; a folder the trainer wrote after a takeover gets no row, so nobody resumes from it.
        with self._fenced() as writes:
            if writes is None:
                return
            relpath = artifacts.relative_to_data(self.ctx.data_dir, path)
            checkpoints.add_checkpoint(writes, run_id=self.run_id, step=step, path=relpath)
            runs.add_event(writes, run_id=self.run_id, message=f"checkpoint at step {step}")

    def should_stop(self) -> bool:
        self._beat()
        self.preempted = self.preempted or self.ctx.shutting_down()
        return self.cancel_requested or not self.owned or self.preempted

    def close(self) -> None:
        self.session.close()


class Heartbeat:
    """A thread that keeps the run's heartbeat fresh during long steps (model loading, big rollouts)."""

    def __init__(self, ctx: JobContext, run: Run, callback: StoreCallback):
        self.ctx, self.run_id, self.attempt, self.callback = ctx, run.id, run.attempt, callback
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"heartbeat-run-{run.id}", daemon=True)

    def _loop(self) -> None:
        with self.ctx.session_factory() as session:
            while not self.stop.wait(self.ctx.heartbeat_seconds):
                try:
                    beat = lifecycle.heartbeat(session, run_id=self.run_id, attempt=self.attempt)
                except SQLAlchemyError:  # the driver's errors (OperationalError: connection lost, ...) come wrapped
                    # A database blip must not end the heartbeat, or a healthy job is reaped as lost.
                    log.warning("run %s: heartbeat failed, retrying", self.run_id, exc_info=True)
                    session.rollback()
                    continue
                if not beat.owned:
                    self.callback.owned = False  # read by should_stop() between steps
                    return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def nothing_to_do(run_id: int, session_factory: sessionmaker[Session]) -> bool:
    """True when the run's job has nothing to do (the run is gone, finished or cancelled), after one query and
    before the job context or anything heavy is built: a cancelled run's message costs next to nothing."""
    with session_factory() as session:
        run = runs.get_run(session, run_id=run_id)
        if run is not None and run.status not in FINISHED_STATUSES:
            return False
    log.info("skipping run %s (%s)", run_id, "deleted" if run is None else run.status)
    return True


def run_training(run_id: int, *, ctx: JobContext, train_fn: Callable[..., Any] | None = None) -> Outcome:
    """Train run `run_id` (re-read from the store) into its artifact folder, resuming from its latest checkpoint."""
    return _execute(run_id, ctx, functools.partial(_training_job, ctx=ctx, train_fn=train_fn))


def run_evaluation(run_id: int, *, ctx: JobContext, evaluate_fn: Callable[..., Any] | None = None) -> Outcome:
    """Evaluate run `run_id`: its checkpoint (run.checkpoint_id; None = the base model) on fixed prompts and seeds."""
    return _execute(run_id, ctx, functools.partial(_evaluation_job, ctx=ctx, evaluate_fn=evaluate_fn))


class _Refused(Exception):
    """The run cannot start (invalid config, missing checkpoint): it fails with this message, nothing is loaded."""


@dataclass
class _Job:
    """One kind of job, ready to run: its store callback, and `work`, which runs the trainer and returns whether
    it stopped early (cancelled or preempted)."""

    callback: StoreCallback
    work: Callable[[], bool]


def _execute(run_id: int, ctx: JobContext, prepare: Callable[[Run], _Job]) -> Outcome:
    """The skeleton of every job: claim the run, prepare its job, run it with a heartbeat, record the outcome."""
    run = _claim(run_id, ctx)
    if run is None:
        return Outcome.SKIPPED
    try:
        job = prepare(run)
    except _Refused as err:
        return _fail(ctx, run, str(err))
    if ctx.shutting_down():  # stopped between delivery and here: give the run back before loading any model
        job.callback.close()
        return _preempt(ctx, run)
    # Imported here, not at the top: at module level it added ~0.45 s to every pool child's start (measured on 50
    # cancelled runs, 0.82 -> 1.27 s per message), which every job pays, a skipped one too.
    from trainer.rewards.remote import reward_hosts

    try:
        with Heartbeat(ctx, run, job.callback), reward_hosts(ctx.reward_hosts):
            stopped = job.work()
    except Exception as err:  # the job boundary: any trainer error becomes the run's error, shown in the UI
        return _fail(ctx, run, _describe(err))
    finally:
        job.callback.close()
    return _finish(ctx, run, job.callback, stopped=stopped)


def _training_job(run: Run, *, ctx: JobContext, train_fn: Callable[..., Any] | None) -> _Job:
    config = _validated(TrainConfig, run)
    out_dir = artifacts.run_dir(ctx.data_dir, run.id)
    total = max(1, run.total_steps or config.steps)
    callback = StoreCallback(ctx, run, progress=lambda step: step / total)

    def work() -> bool:
        train = train_fn
        if train is None:
            from trainer.train import train
        resume_from = _recorded_checkpoint(ctx, run.id, out_dir)
        if resume_from is not None:
            _event(ctx, run.id, f"resuming from checkpoint {artifacts.relative_to_data(ctx.data_dir, resume_from)}")
        from trainer.trackers import mirrored  # config.trackers, only inside the run's folder (docs/trackers.md)

        name, note = run.name or f"run-{run.id}", functools.partial(_event, ctx, run.id, level="warning")
        with mirrored(callback, config, out_dir, run_name=name, run_key=f"platform:{run.id}", note=note) as reporting:
            if config.num_processes > 1:  # spec §12: torchrun ranks, rank 0 relayed here (worker/ranks.py)
                from worker.ranks import run_ranks_job

                return run_ranks_job(ctx, run, config, reporting, out_dir)
            return bool(train(config, reporting, out_dir=out_dir, device=ctx.device, resume=True).stopped)

    return _Job(callback, work)


def _evaluation_job(run: Run, *, ctx: JobContext, evaluate_fn: Callable[..., Any] | None) -> _Job:
    config = _validated(EvalConfig, run)
    checkpoint_path = None
    if run.checkpoint_id is not None:
        with ctx.session_factory() as session:
            row = checkpoints.get_checkpoint(session, checkpoint_id=run.checkpoint_id)
        if row is None:
            raise _Refused(f"checkpoint {run.checkpoint_id} no longer exists")
        checkpoint_path = artifacts.resolve(ctx.data_dir, row.path)
    total = config.num_prompts * config.samples_per_prompt
    callback = _EvalCallback(ctx, run, progress=lambda _step: min(1.0, callback.samples_logged / total))

    def work() -> bool:
        evaluate = evaluate_fn
        if evaluate is None:
            from trainer.evaluate import evaluate
        evaluate(config, checkpoint=checkpoint_path, callback=callback, device=ctx.device)
        return callback.cancel_requested or callback.preempted

    return _Job(callback, work)


def _validated(model: type[TrainConfig] | type[EvalConfig], run: Run) -> Any:
    try:
        return model.model_validate(run.config)
    except ValidationError as err:
        raise _Refused(f"invalid config:\n{format_validation_error(err)}") from err


class _EvalCallback(StoreCallback):
    """An evaluation stops between batches; preempted, it writes no means of the partial set (it starts over)."""

    def on_metrics(self, step: int, metrics_: dict[str, float]) -> None:
        if not self.preempted:
            super().on_metrics(step, metrics_)


# --- helpers ---


def _claim(run_id: int, ctx: JobContext) -> Run | None:
    with ctx.session_factory() as session:
        run = lifecycle.claim_run(session, run_id=run_id, worker=ctx.worker, stale_after=ctx.stale_after)
        if run is None:
            current = runs.get_run(session, run_id=run_id)
            state = "deleted" if current is None else f"{current.status} on {current.worker or 'no worker'}"
            log.info("skipping run %s (%s)", run_id, state)
        return run


def _recorded_checkpoint(ctx: JobContext, run_id: int, out_dir: Path) -> Path | None:
    """The checkpoint the trainer resumes from: the newest one with a row for the run.

    The trainer resumes from the newest folder in out_dir; a folder without a row was written by an attempt that
    was fenced off (or died before recording it), so it is removed first.
    """
    from trainer.checkpoint import checkpoint_folders, latest_checkpoint

    with ctx.session_factory() as session:
        rows = checkpoints.list_checkpoints(session, run_id=run_id)
    recorded = {artifacts.resolve(ctx.data_dir, row.path) for row in rows}
    for folder in checkpoint_folders(out_dir):
        if folder.resolve() not in recorded:
            log.warning("run %s: removing checkpoint %s, which has no database row", run_id, folder)
            shutil.rmtree(folder, ignore_errors=True)
    return latest_checkpoint(out_dir)


def _finish(ctx: JobContext, run: Run, callback: StoreCallback, *, stopped: bool) -> Outcome:
    if not callback.owned:
        log.warning("run %s was taken over (requeued or deleted) while this worker ran it", run.id)
        return Outcome.LOST
    if stopped and callback.preempted and not callback.cancel_requested:  # a user's cancel wins
        return _preempt(ctx, run)
    status = Outcome.CANCELLED if stopped and callback.cancel_requested else Outcome.SUCCEEDED
    with ctx.session_factory() as session:
        if not lifecycle.finish_run(session, run_id=run.id, status=RunStatus(status.value), attempt=run.attempt):
            return Outcome.LOST
    return status


def _preempt(ctx: JobContext, run: Run, reason: str = "worker shutting down") -> Outcome:
    """The worker is stopping and the job has checkpointed: queue the run again (store first), then re-send its job.

    A cancel that arrived meanwhile still means cancelled; a run that moved on (requeued, deleted) is LOST.
    """
    with ctx.session_factory() as session:
        queued = lifecycle.preempt_run(session, run_id=run.id, attempt=run.attempt, reason=f"{reason} ({ctx.worker})")
        if queued is None:
            if lifecycle.is_cancel_requested(session, run_id=run.id) and lifecycle.finish_run(
                session, run_id=run.id, status=RunStatus.CANCELLED, attempt=run.attempt
            ):
                return Outcome.CANCELLED
            return Outcome.LOST
    log.warning("run %s preempted (%s): queued again as attempt %s", run.id, reason, queued.attempt)
    try:
        if ctx.enqueue is None:
            raise RuntimeError("this worker has no broker to re-send the job to")
        ctx.enqueue(queued.id, queued.kind, queued.attempt)
    except Exception as err:  # as the reaper: the run must not stay queued with no job behind it
        log.exception("could not re-send run %s", run.id)
        with ctx.session_factory() as session:
            lifecycle.finish_run(
                session, run_id=run.id, status=RunStatus.FAILED, error=f"preempted, could not requeue: {err}"
            )
        return Outcome.FAILED
    return Outcome.PREEMPTED


def _fail(ctx: JobContext, run: Run, error: str) -> Outcome:
    log.error("run %s failed: %s", run.id, error)
    with ctx.session_factory() as session:
        if not lifecycle.finish_run(session, run_id=run.id, status=RunStatus.FAILED, error=error, attempt=run.attempt):
            return Outcome.LOST
    return Outcome.FAILED


def _event(ctx: JobContext, run_id: int, message: str, level: str = "info") -> None:
    with ctx.session_factory() as session:
        runs.add_event(session, run_id=run_id, message=message, level=level)


def _describe(err: BaseException) -> str:
    """'TypeName: message' plus the innermost frames, enough to act on from the run page."""
    frames = traceback.format_exception(err)
    tail = "".join(frames[-3:]).strip()
    return f"{type(err).__name__}: {err}\n{tail}"[:4000]
