"""Metrics: keys, downsampled series with a step range and max points, summaries, and the live SSE stream."""

from __future__ import annotations

import json
import threading
import time

import pytest
from api_helpers import API
from factories import add_points, make_run

from store import lifecycle as store_lifecycle
from store import metrics as store_metrics


def test_keys_series_step_range_and_max_points(client, session, team):
    run = make_run(session, team_id=team.team_id, status="running")
    add_points(session, run_id=run, steps=range(100), keys={"reward/total/mean": 0.5, "kl_ref/mean": 0.1})
    keys = client.get(f"{API}/runs/{run}/metrics/keys", headers=team.headers).json()
    assert keys == ["kl_ref/mean", "reward/total/mean"]
    params = {"key": "reward/total/mean", "step_min": 10, "step_max": 59, "max_points": 10}
    (series,) = client.get(f"{API}/runs/{run}/metrics", params=params, headers=team.headers).json()["data"]
    assert series["steps"] == list(range(14, 60, 5))  # 10 buckets of 5 steps, each labelled by its last step
    assert series["last"][0] == 0.5 + 14 / 1000 and series["min"][0] == 0.5 + 10 / 1000
    walls = {p.step: p.wall_time.timestamp() for p in store_metrics.read_points(session, run_id=run)}
    assert series["wall"] == pytest.approx([walls[s] for s in series["steps"]], abs=1e-6)  # each bucket's last point
    everything = client.get(f"{API}/runs/{run}/metrics", headers=team.headers).json()["data"]
    assert {s["key"] for s in everything} == set(keys) and len(everything[0]["steps"]) == 100


def test_nan_travels_as_null_and_summaries(client, session, team):
    run = make_run(session, team_id=team.team_id, status="succeeded")
    store_metrics.append_metrics(
        session, run_id=run, rows=[(0, "reward/total/mean", 0.2), (1, "reward/total/mean", 0.9)]
    )
    store_metrics.append_metrics(
        session, run_id=run, rows=[(2, "reward/total/mean", 0.4), (2, "kl_ref/mean", float("nan"))]
    )
    session.commit()
    (series,) = client.get(f"{API}/runs/{run}/metrics", params={"key": "kl_ref/mean"}, headers=team.headers).json()[
        "data"
    ]
    assert series["last"] == [None]
    summary = client.get(f"{API}/metrics/summary", params={"run_id": run}, headers=team.headers).json()["data"][0]
    reward = summary["metrics"]["reward/total/mean"]
    assert (reward["final"], reward["final_step"], reward["best"], reward["best_step"]) == (0.4, 2, 0.9, 1)


def test_live_stream_delivers_points_and_status_then_ends(client, services, session, team):
    run = make_run(session, team_id=team.team_id, status="running")
    add_points(session, run_id=run, steps=range(2), keys={"reward/total/mean": 0.5})

    def worker_side():  # what a worker does while the client listens: more points, then it finishes
        time.sleep(0.3)
        with services.session() as s:
            add_points(s, run_id=run, steps=range(2, 4), keys={"reward/total/mean": 0.5})
            store_lifecycle.heartbeat(s, run_id=run, attempt=1, step=4, progress=1.0)
            store_lifecycle.finish_run(s, run_id=run, status="succeeded")

    thread = threading.Thread(target=worker_side)
    thread.start()
    events = []
    with client.stream("GET", f"{API}/runs/{run}/metrics/stream", headers=team.headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line.split(":", 1)[1])))
                if event == "end":
                    break
    thread.join()
    steps = [data["step"] for name, data in events if name == "metrics"]
    assert steps == [0, 1, 2, 3]
    assert events[0] == ("metrics", {"step": 0, "values": {"reward/total/mean": 0.5}})
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[0] == "running" and statuses[-1] == "succeeded"
    assert events[-1] == ("end", {"status": "succeeded"})


def test_stream_resumes_after_step(client, session, team):
    run = make_run(session, team_id=team.team_id, status="succeeded")
    add_points(session, run_id=run, steps=range(5), keys={"lr": 1.0})
    with client.stream("GET", f"{API}/runs/{run}/metrics/stream?after_step=2", headers=team.headers) as r:
        data = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert [d["step"] for d in data if "values" in d] == [3, 4]
