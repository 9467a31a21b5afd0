"""A run of several ranks over REST (spec §12): its job goes to the queue of its rank count with an event saying who
takes it, GET /runs shows its world size, and a rank count that does not divide the prompts is a 422 naming the
field with nothing queued."""

from __future__ import annotations

from api_helpers import API, TINY, jobs_for


def test_a_two_rank_run_is_queued_for_a_two_rank_worker(client, services, team):
    r = client.post(
        f"{API}/runs", json={"preset": "shapes-dppo", "overrides": {**TINY, "num_processes": 2}}, headers=team.headers
    )
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["num_processes"] == 2 and run["config"]["num_processes"] == 2
    assert jobs_for(services, run["id"]) == [
        {"task": "worker.tasks.train_run", "args": [run["id"]], "queue": "train-w2"}
    ]
    events = [e["message"] for e in client.get(f"{API}/runs/{run['id']}/events", headers=team.headers).json()]
    assert any("queued on 'train-w2': a worker with 2 GPUs or more takes it" in e for e in events), events
    listed = {item["id"]: item for item in client.get(f"{API}/runs", headers=team.headers).json()["data"]}
    assert listed[run["id"]]["num_processes"] == 2


def test_ranks_that_do_not_divide_the_prompts_are_refused_naming_the_field(client, services, team):
    before = len(services.queue.sent)
    body = {"preset": "shapes-dppo", "overrides": {**TINY, "num_processes": 3}}
    r = client.post(f"{API}/runs", json=body, headers=team.headers)
    assert r.status_code == 422 and "num_processes=3 must divide prompts_per_step=2" in r.text, r.text
    assert len(services.queue.sent) == before
