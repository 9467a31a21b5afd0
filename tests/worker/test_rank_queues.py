# ruff: noqa: F811 - `broker_app` is the imported fixture
"""Runs of several ranks wait in their own queue (spec §12): the reaper's lost-message check lists those queues too,
so a W > 1 run waiting for a worker that hosts W ranks is not taken for lost and re-sent every minute."""

from __future__ import annotations

from store.broker import run_queue
from tests.worker.test_lost_messages import broker_app  # noqa: F401 - filesystem and Redis brokers
from worker.celery_app import enqueue_run
from worker.lost_messages import waiting_run_ids
from worker.ranks import queued_rank_queues


def test_a_queued_run_of_two_ranks_is_seen_waiting_in_train_w2(broker_app, session, make_run, tiny_config):
    one, two = make_run(tiny_config()), make_run(tiny_config(num_processes=2))
    session.commit()
    assert queued_rank_queues(session) == ["train-w2"]  # the one-rank run waits in 'train', listed anyway
    for run in (one, two):
        enqueue_run(
            run.id, run.kind, attempt=run.attempt, celery_app=broker_app, queue=run_queue(run.kind, run.config)
        )
    assert waiting_run_ids(broker_app) == {one.id}
    assert waiting_run_ids(broker_app, extra_queues=queued_rank_queues(session)) == {one.id, two.id}
