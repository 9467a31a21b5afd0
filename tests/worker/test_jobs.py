"""Jobs as plain functions with the real trainer: rows written, cancel within a step, skip, resume, evaluation."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from store import artifacts, checkpoints, lifecycle, metrics, runs, samples
from store.models import Run, utcnow
from trainer.callbacks import Sample
from trainer.checkpoint import checkpoint_dir, latest_checkpoint
from worker import jobs, reaper

KEY = "reward/total/mean"  # a spec §7 metric reported at every step
# Tests that train for real run on SQLite only (2 shared cores); the Celery tests train on PostgreSQL too.
sqlite_only = pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)


def _steps(session, run_id: int, key: str = KEY) -> list[int]:
    session.rollback()  # end the test's read snapshot (SQLite keeps one per open transaction)
    return [p.step for p in metrics.read_points(session, run_id=run_id, keys=[key])]


def _fresh(session, run_id: int) -> Run:
    session.rollback()
    return runs.get_run(session, run_id=run_id)


class _Killed(BaseException):
    """Stands in for SIGKILL inside a test: not an Exception, so the job records nothing, like a dead process."""


def _wrapping_train(hook):
    """A train_fn: the real trainer, with `hook(step, callback)` run after each on_metrics."""
    from trainer.train import train

    def train_fn(config, callback, **kw):
        inner = callback.on_metrics

        def on_metrics(step, values):
            inner(step, values)
            hook(step, callback)

        callback.on_metrics = on_metrics
        return train(config, callback, **kw)

    return train_fn


@pytest.mark.slow
@sqlite_only
def test_tiny_training_run_writes_rows_and_files(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config())
    assert jobs.run_training(run.id, ctx=ctx) == jobs.Outcome.SUCCEEDED
    done = _fresh(session, run.id)
    assert (done.status, done.progress, done.step, done.worker) == ("succeeded", 1.0, 3, "test@host")
    assert _steps(session, run.id) == [1, 2, 3]
    assert len(metrics.metric_keys(session, run_ids=[run.id])) > 10
    logged = samples.list_samples(session, run_id=run.id)
    assert [(s.step, s.index) for s in logged] == [(2, 0), (2, 1)] and logged[0].rewards
    assert artifacts.resolve(ctx.data_dir, logged[0].image_path).is_file()
    assert artifacts.resolve(ctx.data_dir, logged[0].thumb_path).is_file()
    ckpts = checkpoints.list_checkpoints(session, run_id=run.id)
    assert [c.step for c in ckpts] == [2, 3]
    assert artifacts.resolve(ctx.data_dir, ckpts[-1].path).is_dir()
    messages = [e.message for e in runs.list_events(session, run_id=run.id)]
    assert messages[0] == "queued (train)" and messages[-1] == "succeeded"


def test_finished_and_cancelled_runs_are_skipped(session, ctx, make_run, tiny_config):
    def never(*_a, **_k):
        raise AssertionError("the trainer must not start")

    done = make_run(tiny_config())
    lifecycle.claim_run(session, run_id=done.id, worker="other", stale_after=timedelta(seconds=30))
    lifecycle.finish_run(session, run_id=done.id, status="succeeded")
    cancelled = make_run(tiny_config())
    lifecycle.request_cancel(session, run_id=cancelled.id)
    busy = make_run(tiny_config())
    lifecycle.claim_run(session, run_id=busy.id, worker="other", stale_after=timedelta(seconds=30))
    for run in (done, cancelled, busy):
        assert jobs.run_training(run.id, ctx=ctx, train_fn=never) == jobs.Outcome.SKIPPED
    assert jobs.run_training(987654, ctx=ctx, train_fn=never) == jobs.Outcome.SKIPPED  # deleted
    assert _fresh(session, cancelled.id).started_at is None


@pytest.mark.slow
@sqlite_only
def test_cancel_stops_within_one_step(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=50, checkpoint_every=0, sample_every=0))

    def cancel_at_2(step, _callback):
        if step == 2:
            with ctx.session_factory() as other:  # the API, in another session
                lifecycle.request_cancel(other, run_id=run.id)

    assert jobs.run_training(run.id, ctx=ctx, train_fn=_wrapping_train(cancel_at_2)) == jobs.Outcome.CANCELLED
    assert _steps(session, run.id) == [1, 2]
    final = _fresh(session, run.id)
    assert final.status == "cancelled" and final.finished_at is not None
    assert [c.step for c in checkpoints.list_checkpoints(session, run_id=run.id)] == [2]  # resumable


@pytest.mark.slow
@sqlite_only
def test_killed_run_is_reaped_and_resumes_without_missing_or_doubled_steps(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=5), max_attempts=3)

    def die_at_3(step, _callback):
        if step == 3:  # after step 3's metrics, before its checkpoint would have been... (checkpoint is at 2 and 4)
            raise _Killed

    with pytest.raises(_Killed):
        jobs.run_training(run.id, ctx=ctx, train_fn=_wrapping_train(die_at_3))
    assert _fresh(session, run.id).status == "running"  # nobody told the database: only the heartbeat stops
    assert _steps(session, run.id) == [1, 2, 3]

    session.execute(update(Run).where(Run.id == run.id).values(heartbeat_at=utcnow() - timedelta(minutes=10)))
    session.commit()
    sent: list[tuple[int, str, int]] = []
    reaped = reaper.reap_stale_runs(
        session, stale_after=timedelta(minutes=1), enqueue=lambda i, k, a: sent.append((i, k, a))
    )
    assert [r.id for r in reaped] == [run.id] and sent == [(run.id, "train", 2)]  # the new attempt's job
    assert (_fresh(session, run.id).status, _fresh(session, run.id).attempt) == ("queued", 2)

    assert jobs.run_training(run.id, ctx=ctx) == jobs.Outcome.SUCCEEDED
    assert _steps(session, run.id) == [1, 2, 3, 4, 5]  # step 3 recomputed after resuming from step 2, not doubled
    messages = [e.message for e in runs.list_events(session, run_id=run.id)]
    assert any("resuming from checkpoint runs/" in m and m.endswith("step_000002") for m in messages)
    assert any(m.startswith("lost (worker test@host") for m in messages)


def test_reaper_fails_a_run_after_max_attempts(session, make_run, tiny_config):
    run = make_run(tiny_config(), max_attempts=1)
    lifecycle.claim_run(session, run_id=run.id, worker="w", stale_after=timedelta(seconds=30))
    session.execute(update(Run).where(Run.id == run.id).values(heartbeat_at=utcnow() - timedelta(minutes=10)))
    session.commit()
    sent: list = []
    reaper.reap_stale_runs(session, stale_after=timedelta(minutes=1), enqueue=lambda i, k, a: sent.append(i))
    final = _fresh(session, run.id)
    assert sent == [] and final.status == "failed" and "stopped sending heartbeats" in final.error
    assert reaper.reap_stale_runs(session, stale_after=timedelta(minutes=1), enqueue=sent.append) == []


def test_reaper_marks_run_failed_when_the_broker_refuses(session, make_run, tiny_config):
    run = make_run(tiny_config())
    lifecycle.claim_run(session, run_id=run.id, worker="w", stale_after=timedelta(seconds=30))
    session.execute(update(Run).where(Run.id == run.id).values(heartbeat_at=utcnow() - timedelta(minutes=10)))
    session.commit()

    def broken(_run_id, _kind, _attempt):
        raise ConnectionError("broker down")

    reaper.reap_stale_runs(session, stale_after=timedelta(minutes=1), enqueue=broken)
    final = _fresh(session, run.id)
    assert final.status == "failed" and "broker down" in final.error


def test_a_worker_whose_run_was_requeued_stops_and_writes_nothing(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=10))

    def fake_train(config, callback, **_kw):
        callback.on_metrics(1, {KEY: 1.0})
        with ctx.session_factory() as other:  # the reaper decided this worker was dead
            lifecycle.requeue_run(other, run_id=run.id, attempt=1, reason="test")
        assert callback.should_stop()
        callback.on_metrics(2, {KEY: 2.0})  # ignored: the run belongs to the next attempt

        class Result:
            stopped = True

        return Result()

    assert jobs.run_training(run.id, ctx=ctx, train_fn=fake_train) == jobs.Outcome.LOST
    assert _steps(session, run.id) == [1]
    assert _fresh(session, run.id).status == "queued"


def test_trainer_errors_and_invalid_configs_fail_the_run_visibly(session, ctx, make_run, tiny_config):
    def boom(*_a, **_k):
        raise RuntimeError("CUDA out of memory (pretend)")

    run = make_run(tiny_config())
    assert jobs.run_training(run.id, ctx=ctx, train_fn=boom) == jobs.Outcome.FAILED
    failed = _fresh(session, run.id)
    assert failed.status == "failed" and failed.error.startswith("RuntimeError: CUDA out of memory")
    assert runs.list_events(session, run_id=run.id)[-1].level == "error"

    bad = make_run({**tiny_config(), "loss": "ppo"})
    assert jobs.run_training(bad.id, ctx=ctx, train_fn=boom) == jobs.Outcome.FAILED
    assert "loss:" in _fresh(session, bad.id).error


@pytest.mark.slow
@sqlite_only
def test_evaluation_of_a_checkpoint(session, ctx, make_run, tiny_config):
    from trainer.config import EvalConfig, TrainConfig

    parent = make_run(tiny_config(steps=2, sample_every=0))
    assert jobs.run_training(parent.id, ctx=ctx) == jobs.Outcome.SUCCEEDED
    ckpt = checkpoints.latest_checkpoint(session, run_id=parent.id)
    config = EvalConfig(train=TrainConfig.model_validate(parent.config), num_prompts=3, num_steps=4, batch_size=2)
    evaluation = make_run(config.model_dump(mode="json"), kind="eval", parent_run_id=parent.id, checkpoint_id=ckpt.id)
    assert jobs.run_evaluation(evaluation.id, ctx=ctx) == jobs.Outcome.SUCCEEDED
    done = _fresh(session, evaluation.id)
    assert (done.status, done.progress) == ("succeeded", 1.0)
    logged = samples.list_samples(session, run_id=evaluation.id)
    assert [(s.step, s.index) for s in logged] == [(2, 0), (2, 1), (2, 2)]  # at the checkpoint's step
    assert any(k.startswith("eval/reward/") for k in metrics.metric_keys(session, run_ids=[evaluation.id]))


def _stopping(ctx, sent: list):
    """ctx with a stop flag (what worker/shutdown.py sets on SIGTERM) and an enqueue that records the run's status
    as the store has it when the job is re-sent (it must already be queued: store first, then the broker)."""
    flag = threading.Event()

    def enqueue(run_id: int, kind: str, attempt: int) -> None:
        with ctx.session_factory() as other:
            assert attempt == runs.get_run(other, run_id=run_id).attempt  # the job is sent for the new attempt
            sent.append((run_id, kind, runs.get_run(other, run_id=run_id).status))

    return dataclasses.replace(ctx, shutting_down=flag.is_set, enqueue=enqueue), flag


@pytest.mark.slow
@sqlite_only
def test_shutdown_preempts_the_run_and_the_next_attempt_resumes_it(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=5, checkpoint_every=0, sample_every=0))
    sent: list = []
    ctx, stop = _stopping(ctx, sent)

    def stop_at_2(step, _callback):
        if step == 2:
            stop.set()  # SIGTERM during step 2: the trainer stops before step 3

    assert jobs.run_training(run.id, ctx=ctx, train_fn=_wrapping_train(stop_at_2)) == jobs.Outcome.PREEMPTED
    assert sent == [(run.id, "train", "queued")]
    queued = _fresh(session, run.id)
    assert (queued.status, queued.worker, queued.attempt, queued.max_attempts) == ("queued", None, 2, 4)
    assert queued.finished_at is None and queued.error is None
    assert _steps(session, run.id) == [1, 2]
    assert [c.step for c in checkpoints.list_checkpoints(session, run_id=run.id)] == [2]  # the preemption's
    messages = [e.message for e in runs.list_events(session, run_id=run.id)]
    assert messages[-2:] == [
        "checkpoint at step 2",
        "preempted: worker shutting down (test@host); requeued, attempt 2/4 resumes from its checkpoint",
    ]

    stop.clear()  # the next worker
    assert jobs.run_training(run.id, ctx=ctx) == jobs.Outcome.SUCCEEDED
    assert _steps(session, run.id) == [1, 2, 3, 4, 5]
    assert (_fresh(session, run.id).status, _fresh(session, run.id).attempt) == ("succeeded", 2)


def _fake_train(*, stop_after: int, on_stop=None):
    """A train_fn that reports steps until should_stop() (checked before each step, as the trainer does)."""

    def train_fn(config, callback, **_kw):
        step = 0
        while step < config.steps:
            if callback.should_stop():
                break
            step += 1
            callback.on_metrics(step, {KEY: float(step)})
            if step == stop_after and on_stop is not None:
                on_stop()
        return SimpleNamespace(stopped=step < config.steps)

    return train_fn


def test_a_cancel_still_means_cancelled_while_the_worker_stops(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=10))
    sent: list = []
    ctx, stop = _stopping(ctx, sent)

    def cancel_and_stop():
        with ctx.session_factory() as other:
            lifecycle.request_cancel(other, run_id=run.id)
        stop.set()

    train_fn = _fake_train(stop_after=2, on_stop=cancel_and_stop)
    assert jobs.run_training(run.id, ctx=ctx, train_fn=train_fn) == jobs.Outcome.CANCELLED
    assert sent == [] and _fresh(session, run.id).status == "cancelled"

    # A cancel that lands between the trainer's return and the requeue wins too.
    late = make_run(tiny_config(steps=10))

    def stop_then_cancel():
        stop.set()
        with ctx.session_factory() as other:
            lifecycle.request_cancel(other, run_id=late.id)

    stop.clear()
    train_fn = _fake_train(stop_after=2, on_stop=stop_then_cancel)
    assert jobs.run_training(late.id, ctx=ctx, train_fn=train_fn) == jobs.Outcome.CANCELLED
    assert sent == [] and _fresh(session, late.id).status == "cancelled"


def test_a_job_delivered_while_the_worker_stops_is_given_back_untouched_by_the_trainer(
    session, ctx, make_run, tiny_config
):
    def never(*_a, **_k):
        raise AssertionError("the trainer must not start")

    run = make_run(tiny_config(steps=10))
    sent: list = []
    ctx, stop = _stopping(ctx, sent)
    stop.set()
    assert jobs.run_training(run.id, ctx=ctx, train_fn=never) == jobs.Outcome.PREEMPTED
    assert sent == [(run.id, "train", "queued")] and _fresh(session, run.id).attempt == 2


def test_a_preempted_run_whose_job_cannot_be_resent_fails_visibly(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=10))

    def broken(_run_id, _kind, _attempt):
        raise ConnectionError("broker down")

    stop = threading.Event()
    ctx = dataclasses.replace(ctx, shutting_down=stop.is_set, enqueue=broken)
    assert jobs.run_training(run.id, ctx=ctx, train_fn=_fake_train(stop_after=3, on_stop=stop.set)) == (
        jobs.Outcome.FAILED
    )
    failed = _fresh(session, run.id)
    assert failed.status == "failed" and "broker down" in failed.error and "preempted" in failed.error


def test_evaluation_stops_between_batches_and_is_requeued(session, ctx, make_run, tiny_config):
    from trainer.config import EvalConfig, TrainConfig

    config = EvalConfig(train=TrainConfig.model_validate(tiny_config()), num_prompts=4, num_steps=4, batch_size=1)
    run = make_run(config.model_dump(mode="json"), kind="eval")
    sent: list = []
    ctx, stop = _stopping(ctx, sent)
    batches: list[int] = []

    def evaluate_fn(config, *, checkpoint, callback, device):
        for batch in range(4):
            if callback.should_stop():
                break
            batches.append(batch)
            if batch == 1:
                stop.set()
        callback.on_metrics(0, {"eval/reward/total/mean": 0.5})  # the means of the partial set: not written

    assert jobs.run_evaluation(run.id, ctx=ctx, evaluate_fn=evaluate_fn) == jobs.Outcome.PREEMPTED
    assert batches == [0, 1] and sent == [(run.id, "eval", "queued")]
    assert metrics.metric_keys(session, run_ids=[run.id]) == []
    assert _fresh(session, run.id).status == "queued"


def test_an_old_attempt_writes_nothing_after_a_takeover(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config())
    old = lifecycle.claim_run(session, run_id=run.id, worker=ctx.worker, stale_after=ctx.stale_after)
    callback = jobs.StoreCallback(ctx, old, progress=lambda step: step / 10)
    callback.on_metrics(1, {KEY: 1.0})  # while it owns the run
    # The reaper requeues the run and another worker claims it; the old attempt has not asked should_stop() yet.
    lifecycle.requeue_run(session, run_id=run.id, attempt=old.attempt, reason="test")
    lifecycle.claim_run(session, run_id=run.id, worker="other@host", stale_after=ctx.stale_after)
    folder = checkpoint_dir(artifacts.run_dir(ctx.data_dir, run.id), 2)  # the trainer writes it, then reports it
    folder.mkdir(parents=True)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    try:
        callback.on_metrics(2, {KEY: 2.0})
        callback.on_samples(2, [Sample(prompt="a red circle", seed=0, index=0, image=image)])
        callback.on_checkpoint(2, folder)
        assert not callback.owned and callback.should_stop()
    finally:
        callback.close()
    assert _steps(session, run.id) == [1]
    assert samples.list_samples(session, run_id=run.id) == []
    assert not (ctx.data_dir / artifacts.sample_relpath(run.id, 2, 0, 0)).exists()
    assert checkpoints.list_checkpoints(session, run_id=run.id) == []
    assert not any(e.message.startswith("checkpoint at") for e in runs.list_events(session, run_id=run.id))
    current = _fresh(session, run.id)
    assert (current.status, current.worker, current.attempt) == ("running", "other@host", 2)


def test_resume_skips_checkpoint_folders_without_a_row(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(steps=10))
    out_dir = artifacts.run_dir(ctx.data_dir, run.id)
    for step in (2, 4):  # step 4: written by an attempt that was fenced off before it could record it
        folder = checkpoint_dir(out_dir, step)
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step}))
    checkpoints.add_checkpoint(
        session, run_id=run.id, step=2, path=artifacts.relative_to_data(ctx.data_dir, checkpoint_dir(out_dir, 2))
    )
    seen = []

    def train_fn(config, callback, *, out_dir, **_kw):
        seen.append(latest_checkpoint(out_dir))  # what the trainer resumes from
        return SimpleNamespace(stopped=False)

    assert jobs.run_training(run.id, ctx=ctx, train_fn=train_fn) == jobs.Outcome.SUCCEEDED
    assert seen == [checkpoint_dir(out_dir, 2)] and not checkpoint_dir(out_dir, 4).exists()
    session.rollback()  # a fresh read snapshot
    messages = [e.message for e in runs.list_events(session, run_id=run.id)]
    assert any(m.startswith("resuming from checkpoint") and m.endswith("step_000002") for m in messages)


def test_the_heartbeat_survives_database_errors(session, ctx, make_run, tiny_config, monkeypatch):
    run = make_run(tiny_config())
    claimed = lifecycle.claim_run(session, run_id=run.id, worker=ctx.worker, stale_after=ctx.stale_after)
    session.execute(update(Run).where(Run.id == run.id).values(heartbeat_at=utcnow() - timedelta(minutes=10)))
    session.commit()
    real, calls = lifecycle.heartbeat, []

    def flaky(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) <= 2:  # the first two beats hit a dropped connection
            raise OperationalError("UPDATE runs ...", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "heartbeat", flaky)
    callback = SimpleNamespace(owned=True)
    with jobs.Heartbeat(dataclasses.replace(ctx, heartbeat_seconds=0.05), claimed, callback) as beat:
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beat.thread.is_alive(), "a database error must not end the heartbeat thread"
    assert len(calls) >= 4 and callback.owned
    assert utcnow() - _fresh(session, run.id).heartbeat_at < timedelta(minutes=1)
