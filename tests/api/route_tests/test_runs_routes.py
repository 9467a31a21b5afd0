"""/runs: create from preset or config (+ overrides), 422 naming the field with nothing queued, pagination, cancel,
delete, evaluate. Every test runs on SQLite and PostgreSQL with the real filesystem broker."""

from __future__ import annotations

from api_helpers import API, TINY, jobs_for
from factories import add_checkpoint_folder, make_run


def test_create_from_preset_with_overrides_queues_after_commit(client, services, team):
    r = client.post(
        f"{API}/runs", json={"preset": "shapes-clip", "overrides": TINY, "tags": ["t1"]}, headers=team.headers
    )
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued" and run["kind"] == "train" and run["preset"] == "shapes-clip"
    assert run["config"]["loss"] == "clip" and run["config"]["steps"] == 2 and run["total_steps"] == 2
    # the CommitCheckingQueue asserted the row was visible from another session before sending
    assert jobs_for(services, run["id"]) == [{"task": "worker.tasks.train_run", "args": [run["id"]], "queue": "train"}]


def test_create_from_full_config(client, services, team):
    config = {"loss": "dppo", "delta": 2e-5, **TINY}
    r = client.post(f"{API}/runs", json={"config": config, "name": "mine"}, headers=team.headers)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["delta"] == 2e-5 and r.json()["name"] == "mine"


def _assert_422_names(client, services, team, body, loc_tail, msg_part=""):
    before = len(services.queue.sent)
    r = client.post(f"{API}/runs", json=body, headers=team.headers)
    assert r.status_code == 422, r.text
    locs = [tuple(e["loc"]) for e in r.json()["detail"]]
    assert any(loc[-len(loc_tail) :] == loc_tail for loc in locs), locs
    assert msg_part in r.text
    assert len(services.queue.sent) == before, "nothing may be queued for an invalid config"
    runs = client.get(f"{API}/runs", headers=team.headers).json()
    assert runs["count"] == 0, "nothing may be stored either"


def test_422_bad_override_names_the_field(client, services, team):
    _assert_422_names(client, services, team, {"preset": "shapes-dppo", "overrides": {"loss": "ppo"}}, ("loss",))


def test_422_unknown_override_key(client, services, team):
    _assert_422_names(client, services, team, {"preset": "shapes-dppo", "overrides": {"lossy": 1}}, ("lossy",))


def test_422_bad_full_config_field(client, services, team):
    _assert_422_names(client, services, team, {"config": {"learning_rate": -1}}, ("config", "learning_rate"))


def test_422_cross_field_rule_names_the_fields(client, services, team):
    body = {"preset": "shapes-dppo", "overrides": {"num_minibatches": 3}}
    _assert_422_names(client, services, team, body, ("overrides",), "num_minibatches")


def test_422_unknown_preset(client, services, team):
    _assert_422_names(client, services, team, {"preset": "nope"}, ("preset",), "shapes-dppo")


def test_cursor_pagination_and_filters(client, session, team):
    ids = [make_run(session, team_id=team.team_id, tags=["even"] if i % 2 == 0 else []) for i in range(5)]
    make_run(session, team_id=team.team_id, status="succeeded")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "status": "queued", **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{API}/runs", params=params, headers=team.headers).json()
        assert page["count"] == len(page["data"]) <= 2
        seen += [run["id"] for run in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)  # newest first, each exactly once
    tagged = client.get(f"{API}/runs", params={"tag": "even"}, headers=team.headers).json()
    assert sorted(run["id"] for run in tagged["data"]) == ids[0::2]
    assert client.get(f"{API}/runs", params={"cursor": "x"}, headers=team.headers).status_code == 422
    assert client.get(f"{API}/runs", params={"status": "bogus"}, headers=team.headers).status_code == 422


def test_list_items_carry_no_config_and_get_has_it(client, session, team):
    run_id = make_run(session, team_id=team.team_id)
    (item,) = client.get(f"{API}/runs", headers=team.headers).json()["data"]
    full = client.get(f"{API}/runs/{run_id}", headers=team.headers).json()
    assert "config" not in item and full["config"] and {**item, "config": full["config"]} == full
    # the OpenAPI schema says so: list items are RunListItem (no config), GET /runs/{id} is RunPublic
    schemas = client.get(f"{API}/openapi.json").json()["components"]["schemas"]
    assert schemas["RunsPublic"]["properties"]["data"]["items"] == {"$ref": "#/components/schemas/RunListItem"}
    assert "config" not in schemas["RunListItem"]["properties"] and "config" in schemas["RunPublic"]["required"]


def test_cancel_queued_goes_straight_to_cancelled(client, session, team):
    run_id = make_run(session, team_id=team.team_id)
    r = client.post(f"{API}/runs/{run_id}/cancel", headers=team.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["cancel_requested"]


def test_cancel_running_sets_the_flag(client, session, team):
    run_id = make_run(session, team_id=team.team_id, status="running")
    r = client.post(f"{API}/runs/{run_id}/cancel", headers=team.headers)
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    events = client.get(f"{API}/runs/{run_id}/events", headers=team.headers).json()
    assert [e["message"] for e in events][-1] == "cancel requested"


def test_delete_refuses_running_and_removes_finished(client, session, team):
    running = make_run(session, team_id=team.team_id, status="running")
    assert client.delete(f"{API}/runs/{running}", headers=team.headers).status_code == 409
    done = make_run(session, team_id=team.team_id, status="succeeded")
    assert client.delete(f"{API}/runs/{done}", headers=team.headers).status_code == 200
    assert client.get(f"{API}/runs/{done}", headers=team.headers).status_code == 404


def test_evaluate_checkpoint_and_base_model(client, services, session, team):
    created = client.post(
        f"{API}/runs", json={"preset": "shapes-dppo", "overrides": TINY}, headers=team.headers
    ).json()
    ckpt = add_checkpoint_folder(session, data_dir=services.settings.DATA_DIR, run_id=created["id"], step=2)
    body = {"checkpoint_id": ckpt, "overrides": {"num_prompts": 4}}
    r = client.post(f"{API}/runs/{created['id']}/evaluate", json=body, headers=team.headers)
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["kind"] == "eval" and ev["parent_run_id"] == created["id"] and ev["checkpoint_id"] == ckpt
    assert ev["config"]["num_prompts"] == 4 and ev["config"]["train"]["steps"] == 2
    assert jobs_for(services, ev["id"])[0]["task"] == "worker.tasks.evaluate_run"
    assert jobs_for(services, ev["id"])[0]["queue"] == "eval"
    base = client.post(f"{API}/runs/{created['id']}/evaluate", json={}, headers=team.headers).json()
    assert base["checkpoint_id"] is None and base["parent_run_id"] == created["id"]
    bad = client.post(
        f"{API}/runs/{created['id']}/evaluate", json={"overrides": {"num_prompts": 0}}, headers=team.headers
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "num_prompts"
    listed = client.get(f"{API}/runs", params={"parent_run_id": created["id"]}, headers=team.headers).json()
    assert {run["id"] for run in listed["data"]} == {ev["id"], base["id"]}
