"""Every Celery app of the platform (worker, API producer, health check) uses the same transport options
(store/broker.py): on Redis a ping from an app left at kombu's default visibility timeout (1 h) re-queues every job
that has been running longer than that."""

from __future__ import annotations

import runpy
import socket
import time
from pathlib import Path

import celery

from api.services.queue import make_celery_app
from store.broker import DEFAULT_VISIBILITY_TIMEOUT
from worker.celery_app import create_celery_app
from worker.settings import WorkerSettings

HEALTHCHECK = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


def test_the_api_and_the_worker_share_the_transport_options(tmp_path):
    embedded = WorkerSettings(DATA_DIR=tmp_path, BROKER_URL="filesystem://")
    api = make_celery_app("filesystem://", str(embedded.broker_folder))
    assert api.conf.broker_transport_options == create_celery_app(embedded).conf.broker_transport_options
    assert api.conf.broker_transport_options == embedded.broker_transport_options()

    redis = WorkerSettings(DATA_DIR=tmp_path, BROKER_URL="redis://broker:6379/0", BROKER_VISIBILITY_TIMEOUT=7200)
    api = make_celery_app(redis.BROKER_URL, visibility_timeout=redis.BROKER_VISIBILITY_TIMEOUT)
    assert api.conf.broker_transport_options == redis.broker_transport_options() == {"visibility_timeout": 7200}
    assert make_celery_app(redis.BROKER_URL).conf.broker_transport_options == {
        "visibility_timeout": DEFAULT_VISIBILITY_TIMEOUT
    }
    assert DEFAULT_VISIBILITY_TIMEOUT == WorkerSettings(BROKER_URL="redis://x").BROKER_VISIBILITY_TIMEOUT


def test_the_health_check_pings_with_the_workers_transport_options(monkeypatch):
    monkeypatch.setenv("BROKER_URL", "redis://broker:6379/0")
    monkeypatch.setenv("BROKER_VISIBILITY_TIMEOUT", "7200")
    built: list[celery.Celery] = []

    class Recording(celery.Celery):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
            self.control.ping = lambda timeout: [{f"gpu0@{socket.gethostname()}": {"ok": "pong"}}]

    monkeypatch.setattr(celery, "Celery", Recording)
    check_worker = runpy.run_path(str(HEALTHCHECK))["check_worker"]
    check_worker()  # healthy: the ping answered
    assert built[0].conf.broker_transport_options == {"visibility_timeout": 7200}


def test_a_ping_from_the_api_leaves_a_long_running_job_alone(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    worker_app = create_celery_app(WorkerSettings(BROKER_URL=redis_url))
    api_app = make_celery_app(redis_url)
    api_app.send_task("worker.tasks.train_run", args=[1], queue="train")
    with worker_app.connection_for_read() as conn:
        queue = conn.SimpleQueue("train")
        message = queue.get(timeout=10)  # delivered and not acknowledged: the job is running
        tag = message.delivery_tag
        client.zadd("unacked_index", {tag: time.time() - 5400})  # for 90 minutes
        try:
            api_app.control.ping(timeout=0.5)  # what the API's workers page does
            assert client.llen("train") == 0 and client.hexists("unacked", tag), "the running job was re-queued"
            celery.Celery(broker=redis_url).control.ping(timeout=0.5)  # kombu's default timeout: 1 h
            assert client.llen("train") == 1, "the hazard this guards against"
        finally:
            message.ack()
            client.delete("train")
            queue.close()
