"""worker/lost_messages.py: the broker's waiting messages by run id, and the re-send of queued runs whose message is
gone (as after a Redis restarted empty), on real brokers (filesystem transport, Redis) and both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from store import lifecycle, runs
from worker.celery_app import create_celery_app, enqueue_run
from worker.lost_messages import MissingMessages, message_run_id, waiting_run_ids
from worker.settings import WorkerSettings


@pytest.fixture(params=["filesystem", "redis"])
def broker_app(request, tmp_path):
    url = "filesystem://" if request.param == "filesystem" else request.getfixturevalue("redis_url")
    app = create_celery_app(WorkerSettings(DATA_DIR=tmp_path / "data", BROKER_URL=url))
    yield app
    if request.param == "redis":  # this test session's own Redis database: its keys but the fixture's lock
        import redis

        client = redis.Redis.from_url(url)
        for key in client.scan_iter():
            if key != b"flowdppo:tests:lock":
                client.delete(key)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_waiting_messages_are_listed_by_run_id(broker_app):
    assert waiting_run_ids(broker_app) == set()
    enqueue_run(7, "train", attempt=1, celery_app=broker_app)
    enqueue_run(9, "eval", attempt=2, celery_app=broker_app)
    assert waiting_run_ids(broker_app) == {7, 9}


def test_a_resent_job_carries_its_attempts_task_id(broker_app):
    """Re-sends (reaper, preemption, forwarding) use store.broker.task_id, the ids a cancel revokes."""
    enqueue_run(7, "train", attempt=3, celery_app=broker_app)
    with broker_app.connection_for_read() as conn:
        queue = conn.SimpleQueue("train")
        message = queue.get(timeout=10)
        message.ack()
        queue.close()
    assert message.headers["id"] == "run-7-attempt-3" and message.headers["task"] == "worker.tasks.train_run"


def test_foreign_or_broken_messages_are_not_runs():
    assert message_run_id(b"not json") is None
    assert message_run_id(b'{"headers": {"task": "other.task"}, "body": "W1sxXSwge30sIHt9XQ=="}') is None
    body = '{"headers": {"task": "worker.tasks.train_run"}, "body": "W1szXSwge30sIHt9XQ==", '
    assert message_run_id((body + '"properties": {"body_encoding": "base64"}}').encode()) == 3  # [[3], {}, {}]


def test_a_queued_run_missing_from_the_broker_is_resent_once_after_the_delay(session, make_run, tiny_config):
    clock, sent = Clock(), []
    missing = MissingMessages(after=30, clock=clock)
    waiting = make_run(tiny_config())  # its message is in the broker
    lost = make_run(tiny_config())
    cancelled = make_run(tiny_config())
    lifecycle.request_cancel(session, run_id=cancelled.id)

    def resend() -> list[int]:
        return missing.resend(session, waiting={waiting.id}, enqueue=lambda *job: sent.append(job))

    assert resend() == []  # first seen missing: maybe a message in flight (just taken, or not yet sent)
    clock.now += 29
    assert resend() == []
    clock.now += 1
    assert resend() == [lost.id] and sent == [(lost.id, "train", 1)]
    assert any(e.message.startswith("re-sent: queued with no job") for e in runs.list_events(session, run_id=lost.id))
    clock.now += 10
    assert resend() == []  # not again at once: the new message is on its way
    clock.now += 20
    assert resend() == [lost.id]  # still missing 30 s later: once more


def test_a_message_seen_again_or_a_claimed_run_resets_the_delay(session, make_run, tiny_config):
    clock, sent = Clock(), []
    missing = MissingMessages(after=30, clock=clock)
    run = make_run(tiny_config())
    missing.resend(session, waiting=set(), enqueue=lambda *a: sent.append(a))
    clock.now += 20
    missing.resend(session, waiting={run.id}, enqueue=lambda *a: sent.append(a))  # it was in flight after all
    clock.now += 20
    assert missing.resend(session, waiting=set(), enqueue=lambda *a: sent.append(a)) == []  # missing 0 s
    lifecycle.claim_run(session, run_id=run.id, worker="w@h", stale_after=timedelta(minutes=3))
    clock.now += 60
    assert missing.resend(session, waiting=set(), enqueue=lambda *a: sent.append(a)) == [] and sent == []
