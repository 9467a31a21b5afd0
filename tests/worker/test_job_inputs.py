"""The worker's share of issue 14's bad inputs: a cancelled run's job costs one query, a diverged run fails with the
trainer's clear error, and the trainer sees the operator's remote-reward hosts while a job runs."""

from __future__ import annotations

import math
import os
from datetime import timedelta

from store import lifecycle, runs
from store.models import Run
from trainer.rewards.remote import HOSTS_ENV, allowed_hosts
from worker import jobs


def _fresh(session, run_id: int) -> Run:
    session.expire_all()
    run = runs.get_run(session, run_id=run_id)
    assert run is not None
    return run


def test_nothing_to_do_for_cancelled_finished_or_deleted_runs(session, ctx, make_run, tiny_config):
    queued, cancelled, done, running = (make_run(tiny_config()) for _ in range(4))
    lifecycle.request_cancel(session, run_id=cancelled.id)
    lifecycle.claim_run(session, run_id=done.id, worker="w", stale_after=timedelta(seconds=30))
    lifecycle.finish_run(session, run_id=done.id, status="succeeded")
    lifecycle.claim_run(session, run_id=running.id, worker="w", stale_after=timedelta(seconds=30))
    verdicts = {r.id: jobs.nothing_to_do(r.id, ctx.session_factory) for r in (queued, cancelled, done, running)}
    assert verdicts == {queued.id: False, cancelled.id: True, done.id: True, running.id: False}
    assert jobs.nothing_to_do(987654, ctx.session_factory)  # deleted
    # a running run may be this worker's own redelivered job: the claim decides, not this check
    assert _fresh(session, cancelled.id).started_at is None


def test_a_diverged_run_fails_with_the_trainers_error(session, ctx, make_run, tiny_config):
    def diverges(*_a, **_k):
        from trainer.metrics import check_finite

        check_finite(2, {"loss/total": math.nan, "grad_norm": 0.5})

    run = make_run(tiny_config())
    assert jobs.run_training(run.id, ctx=ctx, train_fn=diverges) == jobs.Outcome.FAILED
    error = _fresh(session, run.id).error
    assert error.startswith("FloatingPointError: step 2: loss/total=nan: training diverged")


def test_the_trainer_sees_only_the_operators_reward_hosts_during_a_job(session, ctx, make_run, tiny_config):
    seen = []

    def train(*_a, **_k):
        seen.append(allowed_hosts())
        return type("Result", (), {"stopped": False})()

    before = os.environ.get(HOSTS_ENV)
    for hosts in ((), ("scorer.internal:8000",)):
        run = make_run(tiny_config())
        context = jobs.JobContext(**{**ctx.__dict__, "reward_hosts": hosts})
        assert jobs.run_training(run.id, ctx=context, train_fn=train) == jobs.Outcome.SUCCEEDED
    assert seen == [[], ["scorer.internal:8000"]]  # empty: every remote reward refused
    assert os.environ.get(HOSTS_ENV) == before
