"""Auth on every route: 401 without or with a bad token, 403 for non-admins on admin routes, and 404 for another
team's run on EVERY run-scoped route (the table is checked against the app's routes, so a new one cannot slip by)."""

from __future__ import annotations

import pytest
from api_helpers import API
from factories import add_checkpoint_folder, add_points, add_sample_images, make_run, make_team_token

# (method, path, json body); {run} = the other team's run, {sample} and {ckpt} = its sample and checkpoint,
# {mine} = one of the caller's own runs (for routes that take several runs).
RUN_ROUTES = [
    ("GET", "/runs/{run}", None),
    ("DELETE", "/runs/{run}", None),
    ("POST", "/runs/{run}/cancel", None),
    ("GET", "/runs/{run}/events", None),
    ("POST", "/runs/{run}/evaluate", {}),
    ("GET", "/runs/{run}/metrics/keys", None),
    ("GET", "/runs/{run}/metrics", None),
    ("GET", "/runs/{run}/metrics/stream", None),
    ("GET", "/runs/{run}/samples", None),
    ("GET", "/runs/{run}/samples/steps", None),
    ("GET", "/runs/{run}/samples/{sample}/image", None),
    ("GET", "/runs/{run}/checkpoints", None),
    ("GET", "/runs/{run}/checkpoints/{ckpt}/download", None),
    ("GET", "/metrics?run_id={mine}&run_id={run}", None),
    ("GET", "/metrics/summary?run_id={run}", None),
    ("GET", "/reviews/pair?run_id={mine}&run_id={run}", None),
    ("POST", "/reviews/votes", {"left_sample_id": "{my_sample}", "right_sample_id": "{sample}", "choice": "left"}),
    # the caller's own run with the other team's sample / checkpoint ids
    ("GET", "/runs/{mine}/samples/{sample}/image", None),
    ("GET", "/runs/{mine}/checkpoints/{ckpt}/download", None),
]
PUBLIC = {("GET", "/health")}
ADMIN = {("POST", "/teams")}


@pytest.fixture
def foreign(client, services, session, team, other_team):
    """The other team's run with a sample, a checkpoint and points; the caller's own run with a sample."""
    data_dir = services.settings.DATA_DIR
    run = make_run(session, team_id=other_team.team_id, status="succeeded")
    mine = make_run(session, team_id=team.team_id, status="succeeded")
    sample = add_sample_images(session, data_dir=data_dir, run_id=run, step=1, prompts=["a circle"])[0]
    my_sample = add_sample_images(session, data_dir=data_dir, run_id=mine, step=1, prompts=["a circle"])[0]
    ckpt = add_checkpoint_folder(session, data_dir=data_dir, run_id=run, step=1)
    add_points(session, run_id=run, steps=range(3), keys={"reward/total/mean": 0.5})
    return {"run": run, "mine": mine, "sample": sample, "my_sample": my_sample, "ckpt": ckpt}


def _fill(value, ids):
    if isinstance(value, str):
        filled = value.format(**ids)
        return int(filled) if filled.isdigit() and value.startswith("{") else filled
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body"), RUN_ROUTES, ids=[f"{m} {p}" for m, p, _ in RUN_ROUTES])
def test_other_teams_run_is_404_on_every_run_route(client, team, other_team, foreign, method, path, body):
    r = client.request(method, API + _fill(path, foreign), json=_fill(body, foreign), headers=team.headers)
    assert r.status_code == 404, r.text
    # and the owner still sees it untouched (nothing was cancelled or deleted through the foreign call)
    owner = client.get(f"{API}/runs/{foreign['run']}", headers=other_team.headers)
    assert owner.status_code == 200 and owner.json()["status"] == "succeeded"


def test_route_table_covers_every_run_scoped_route(client):
    documented = {(m.upper(), p.removeprefix(API)) for p, ops in client.app.openapi()["paths"].items() for m in ops}
    run_scoped = {(m, p.replace("{run_id}", "{run}")) for m, p in documented if "{run_id}" in p}
    table = {(m, p.replace("{sample_id}", "{sample}").replace("{checkpoint_id}", "{ckpt}")) for m, p, _ in RUN_ROUTES}
    normalised = {
        (m, p.replace("{sample_id}", "{sample}").replace("{checkpoint_id}", "{ckpt}")) for m, p in run_scoped
    }
    assert normalised <= table, f"run-scoped routes missing from RUN_ROUTES: {sorted(normalised - table)}"


def test_401_without_or_with_bad_token_on_every_route(client):
    paths = client.app.openapi()["paths"]
    checked = 0
    for path, ops in paths.items():
        for method in ops:
            if (method.upper(), path.removeprefix(API)) in PUBLIC:
                continue
            url = path.replace("{run_id}", "1").replace("{sample_id}", "1").replace("{checkpoint_id}", "1")
            url = url.replace("{comparison_id}", "1")
            for headers in ({}, {"Authorization": "Bearer fdp_nope_nope"}, {"Authorization": "Basic abc"}):
                r = client.request(method.upper(), url, headers=headers, json={})
                assert r.status_code == 401, (method, path, headers, r.status_code)
                checked += 1
    assert checked > 60


def test_health_needs_no_token(client):
    r = client.get(f"{API}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["database"] is True


def test_403_for_non_admin_on_admin_routes(client, session, team):
    for method, path in ADMIN:
        assert client.request(method, API + path, json={"name": "x"}, headers=team.headers).status_code == 403
    admin = make_team_token(session, admin=True)
    r = client.post(f"{API}/teams", json={"name": f"new-{admin.team_id}"}, headers=admin.headers)
    assert r.status_code == 201 and r.json()["token"].startswith("fdp_")
    created = {"Authorization": f"Bearer {r.json()['token']}"}
    assert client.get(f"{API}/teams/me", headers=created).json()["name"] == f"new-{admin.team_id}"
    assert client.post(f"{API}/teams", json={"name": f"new-{admin.team_id}"}, headers=admin.headers).status_code == 409


def test_other_teams_comparison_is_404(client, team, other_team):
    body = {"preset": "shapes-dppo", "overrides": {"steps": 1}, "variants": {"a": {}, "b": {"loss": "clip"}}}
    created = client.post(f"{API}/comparisons", json=body, headers=other_team.headers).json()
    assert client.get(f"{API}/comparisons/{created['id']}", headers=team.headers).status_code == 404
    assert client.get(f"{API}/comparisons/{created['id']}/aligned", headers=team.headers).status_code == 404
    assert client.get(f"{API}/comparisons", headers=team.headers).json()["count"] == 0
