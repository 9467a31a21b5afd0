"""/workers: who answers a ping over the broker (asked by the api's own Celery app), merged with the running runs."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from api_helpers import API
from factories import make_run

from api.services.queue import make_celery_app
from store import runs as store_runs


class FakeControl:
    """Celery's control API as a broker with two live workers would answer it."""

    def __init__(self, queues: dict[str, list[str]]):
        self.queues = queues

    def ping(self, timeout: float) -> list[dict]:
        return [{name: {"ok": "pong"}} for name in self.queues]

    def inspect(self, timeout: float) -> SimpleNamespace:
        replies = {name: [{"name": q} for q in queues] for name, queues in self.queues.items()}
        return SimpleNamespace(active_queues=lambda: replies)


def running_on(session, *, team_id: int, worker: str) -> int:
    run_id = make_run(session, team_id=team_id, status="running")
    store_runs.get_run(session, run_id=run_id).worker = worker
    session.commit()
    return run_id


def test_workers_online_offline_and_only_own_runs(client, services, session, team, other_team, monkeypatch):
    tag = uuid.uuid4().hex[:6]
    busy, idle, dead, foreign = (f"{name}-{tag}@host" for name in ("busy", "idle", "dead", "foreign"))
    control = FakeControl({busy: ["train", "eval"], idle: ["eval"]})
    real = services.queue.app  # its connection: the broker answers (a filesystem folder)
    monkeypatch.setattr(
        services.queue, "app", SimpleNamespace(control=control, connection_for_write=real.connection_for_write)
    )
    mine = running_on(session, team_id=team.team_id, worker=busy)
    lost = running_on(session, team_id=team.team_id, worker=dead)
    running_on(session, team_id=other_team.team_id, worker=foreign)

    response = client.get(f"{API}/workers", headers=team.headers)
    assert response.status_code == 200
    found = {w["name"]: w for w in response.json() if w["name"].endswith(f"-{tag}@host")}
    assert found == {
        busy: {"name": busy, "online": True, "queues": ["eval", "train"], "run_ids": [mine]},
        idle: {"name": idle, "online": True, "queues": ["eval"], "run_ids": []},
        dead: {"name": dead, "online": False, "queues": [], "run_ids": [lost]},  # the reaper's next candidate
        foreign: {"name": foreign, "online": False, "queues": [], "run_ids": []},  # shared capacity, run hidden
    }


def test_a_broker_that_is_down_gives_workers_a_503_naming_it_and_health_says_so(client, services, team, monkeypatch):
    monkeypatch.setattr(services.queue, "app", make_celery_app("redis://127.0.0.1:1/0"))  # nothing listens there
    response = client.get(f"{API}/workers", headers=team.headers)
    assert response.status_code == 503, response.text
    assert "broker redis://" in response.text and "127.0.0.1:1" in response.text, response.text

    health = client.get(f"{API}/health")
    assert health.status_code == 200  # runs can still be read; the body says what is down
    body = health.json()
    assert (body["status"], body["database"], body["broker"]) == ("degraded", True, False), body
    assert "127.0.0.1:1" in body["broker_error"], body


def test_health_reports_database_and_broker(client):
    body = client.get(f"{API}/health").json()
    assert (body["status"], body["database"], body["broker"], body["broker_error"]) == ("ok", True, True, None)
