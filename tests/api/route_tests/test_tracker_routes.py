"""Trackers in a submitted config (docs/trackers.md): mirrors inside the run's own folder are accepted; a remote MLflow
server, which the worker would reach on the team's behalf, and any path out of the run's folder are a 422."""

from __future__ import annotations

import pytest
from api_helpers import API, TINY


def test_run_local_trackers_are_accepted(client, team):
    trackers = [{"kind": "tensorboard", "uri": "tb"}, {"kind": "mlflow", "uri": "sqlite:///mlflow.db"}]
    body = {"preset": "shapes-dppo", "overrides": {**TINY, "trackers": trackers}}
    r = client.post(f"{API}/runs", json=body, headers=team.headers)
    assert r.status_code in (200, 201), r.text
    assert [t["uri"] for t in r.json()["config"]["trackers"]] == ["tb", "sqlite:///mlflow.db"]


@pytest.mark.parametrize(
    ("tracker", "where"),
    [
        ({"kind": "mlflow", "uri": "http://127.0.0.1:5000"}, "MLflow server"),
        ({"kind": "mlflow", "uri": "https://mlflow.example.com"}, "MLflow server"),
        ({"kind": "tensorboard", "uri": "/srv/other-team/tb"}, "relative"),
        ({"kind": "tensorboard", "uri": "../../../other-run"}, "relative"),
        ({"kind": "mlflow", "uri": "sqlite:////data/flowdppo.db"}, "relative"),
    ],
)
def test_remote_or_escaping_trackers_are_refused(client, services, team, tracker, where):
    before = len(services.queue.sent)
    for body in (
        {"preset": "shapes-dppo", "overrides": {**TINY, "trackers": [tracker]}},
        {"config": {**TINY, "trackers": [tracker]}},
    ):
        r = client.post(f"{API}/runs", json=body, headers=team.headers)
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert "trackers" in error["loc"] and where in error["msg"], error
    variants = {"a": {}, "b": {"trackers": [tracker]}}
    r = client.post(f"{API}/comparisons", json={"preset": "shapes-dppo", "variants": variants}, headers=team.headers)
    assert r.status_code == 422 and "trackers" in r.json()["detail"][0]["loc"], r.text
    assert len(services.queue.sent) == before, "nothing may be queued"
