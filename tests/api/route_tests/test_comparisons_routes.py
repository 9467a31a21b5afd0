"""Comparisons: variants submitted together with the same seeds, 422 per variant with nothing queued, aligned read."""

from __future__ import annotations

from api_helpers import API, TINY, jobs_for
from factories import add_points

from store import runs as store_runs


def test_create_and_read_back_aligned(client, services, session, team):
    body = {
        "name": "clip vs dppo",
        "preset": "shapes-dppo",
        "overrides": TINY,
        "variants": {"clip": {"loss": "clip"}, "dppo": {"loss": "dppo"}},
    }
    r = client.post(f"{API}/comparisons", json=body, headers=team.headers)
    assert r.status_code == 201, r.text
    comparison = r.json()
    runs = {run["variant"]: run for run in comparison["runs"]}
    assert set(runs) == {"clip", "dppo"}
    assert runs["clip"]["config"]["loss"] == "clip" and runs["dppo"]["config"]["loss"] == "dppo"
    # what each run is, not the base preset alone (the clip run is not shapes-dppo)
    assert (runs["clip"]["preset"], runs["dppo"]["preset"]) == ("shapes-dppo + loss=clip", "shapes-dppo + loss=dppo")
    assert runs["clip"]["config"]["seed"] == runs["dppo"]["config"]["seed"]
    assert all(run["comparison_id"] == comparison["id"] for run in runs.values())
    for run in runs.values():
        assert jobs_for(services, run["id"]) == [
            {"task": "worker.tasks.train_run", "args": [run["id"]], "queue": "train"}
        ]
    # clip has logged 10 steps, dppo only 6 (still running): the aligned read keeps the steps both have
    add_points(session, run_id=runs["clip"]["id"], steps=range(10), keys={"reward/total/mean": 0.1, "lr": 1.0})
    add_points(session, run_id=runs["dppo"]["id"], steps=range(6), keys={"reward/total/mean": 0.2, "lr": 1.0})
    aligned = client.get(
        f"{API}/comparisons/{comparison['id']}/aligned", params={"key": "reward/total/mean"}, headers=team.headers
    ).json()
    assert [run["id"] for run in aligned["comparison"]["runs"]] == [run["id"] for run in comparison["runs"]]
    (series,) = aligned["series"]
    assert series["key"] == "reward/total/mean" and series["steps"] == list(range(6))
    assert series["values"][str(runs["dppo"]["id"])] == [0.2 + s / 1000 for s in range(6)]
    assert series["values"][str(runs["clip"]["id"])] == [0.1 + s / 1000 for s in range(6)]
    every = client.get(f"{API}/comparisons/{comparison['id']}/aligned", headers=team.headers).json()
    assert {s["key"] for s in every["series"]} == {"reward/total/mean", "lr"}
    listed = client.get(f"{API}/runs", params={"comparison_id": comparison["id"]}, headers=team.headers).json()
    assert listed["count"] == 2
    assert client.get(f"{API}/comparisons", headers=team.headers).json()["data"][0]["id"] == comparison["id"]


def test_bad_variant_is_422_naming_variant_and_field_and_nothing_is_stored(client, services, team):
    before = len(services.queue.sent)
    body = {"preset": "shapes-dppo", "variants": {"ok": {"loss": "clip"}, "bad": {"clip_range": 5}, "worse": {"x": 1}}}
    r = client.post(f"{API}/comparisons", json=body, headers=team.headers)
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", "variants", "bad", "clip_range"] in locs and ["body", "variants", "worse", "x"] in locs
    assert len(services.queue.sent) == before
    assert client.get(f"{API}/comparisons", headers=team.headers).json()["count"] == 0
    with services.session() as s:
        assert store_runs.list_runs(s, team_id=team.team_id) == ([], None)
