"""Bad input (issue 14): every case is a 422 naming the field, a 404 or a bounded value, never a 500 or a half-stored
row, and SQLite and PostgreSQL answer alike (every test here runs on both)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_helpers import API, TINY, broker_messages
from factories import add_sample_images, make_run

from api.services.queue import TaskQueue, make_celery_app
from store import runs as store_runs

BIG = 2**31  # one past PostgreSQL's INTEGER
HUGE = 2**63  # one past BIGINT (and SQLite's INTEGER)
MB = "x" * 1_000_000


def _send(client, team, method: str, path: str, body: Any = None, raw: str | None = None):
    headers = dict(team.headers)
    content = None
    if raw is not None or body is not None:
        headers["Content-Type"] = "application/json"
        # surrogatepass: a lone surrogate travels as the JSON escape a client would send ("\ud800")
        content = raw.encode() if raw is not None else json.dumps(body).encode("utf-8", "surrogatepass")
    return client.request(method, f"{API}{path}", content=content, headers=headers)


# (label, method, path, body, loc the 422 names). {run} is one of the team's runs.
IDS = [
    ("run id 2^31", "GET", f"/runs/{BIG}", None, ["path", "run_id"]),
    ("run id 2^63", "GET", f"/runs/{HUGE}", None, ["path", "run_id"]),
    ("run id 0", "GET", "/runs/0", None, ["path", "run_id"]),
    ("comparison id", "GET", f"/comparisons/{BIG}", None, ["path", "comparison_id"]),
    ("aligned comparison id", "GET", f"/comparisons/{BIG}/aligned", None, ["path", "comparison_id"]),
    ("checkpoint id", "GET", f"/runs/{{run}}/checkpoints/{BIG}/download", None, ["path", "checkpoint_id"]),
    ("sample id", "GET", f"/runs/{{run}}/samples/{HUGE}/image", None, ["path", "sample_id"]),
    ("samples step", "GET", f"/runs/{{run}}/samples?step={BIG}", None, ["query", "step"]),
    ("metrics run_id", "GET", f"/metrics?run_id={BIG}", None, ["query", "run_id", 0]),
    ("summary run_id", "GET", f"/metrics/summary?run_id={HUGE}", None, ["query", "run_id", 0]),
    ("metrics step_min", "GET", f"/runs/{{run}}/metrics?key=a&step_min={BIG}", None, ["query", "step_min"]),
    ("events after_id", "GET", f"/runs/{{run}}/events?after_id={HUGE}", None, ["query", "after_id"]),
    ("runs comparison_id", "GET", f"/runs?comparison_id={BIG}", None, ["query", "comparison_id"]),
    ("review pair run_id", "GET", f"/reviews/pair?run_id={BIG}&run_id=1", None, ["query", "run_id", 0]),
    ("win rates run_id", "GET", f"/reviews/win-rates?run_id={HUGE}", None, ["query", "run_id", 0]),
    ("cancel", "POST", f"/runs/{BIG}/cancel", None, ["path", "run_id"]),
    ("delete", "DELETE", f"/runs/{BIG}", None, ["path", "run_id"]),
    ("evaluate run", "POST", f"/runs/{BIG}/evaluate", {}, ["path", "run_id"]),
    ("evaluate checkpoint", "POST", "/runs/{run}/evaluate", {"checkpoint_id": BIG}, ["body", "checkpoint_id"]),
    (
        "vote sample",
        "POST",
        "/reviews/votes",
        {"left_sample_id": HUGE, "right_sample_id": 1, "choice": "left"},
        ["body", "left_sample_id"],
    ),
    ("config seed", "POST", "/runs", {"config": {**TINY, "seed": HUGE}}, ["body", "config", "seed"]),
]


@pytest.mark.parametrize(("label", "method", "path", "body", "loc"), IDS, ids=[c[0] for c in IDS])
def test_ids_and_counts_beyond_their_columns_are_a_422_naming_them(
    client, session, team, label, method, path, body, loc
):
    run_id = make_run(session, team_id=team.team_id)
    response = _send(client, team, method, path.format(run=run_id), body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def _cfg(**fields: Any) -> dict[str, Any]:
    return {"config": {**TINY, **fields}}


# (label, path, body, loc prefix the 422 names)
TEXT = [
    ("tag lone surrogate", "/runs", {"config": TINY, "tags": ["\ud800"]}, ["body", "tags", 0]),
    ("name lone surrogate", "/runs", {"config": TINY, "name": "a\udfffb"}, ["body", "name"]),
    ("name NUL", "/runs", {"config": TINY, "name": "a\x00b"}, ["body", "name"]),
    ("tag NUL", "/runs", {"config": TINY, "tags": ["a\x00b"]}, ["body", "tags", 0]),
    ("1 MB tag", "/runs", {"config": TINY, "tags": [MB]}, ["body", "tags", 0]),
    ("10,000 tags", "/runs", {"config": TINY, "tags": [f"t{i}" for i in range(10_000)]}, ["body", "tags"]),
    ("1 MB preset name", "/runs", {"preset": MB}, ["body", "preset"]),
    ("model_path NUL", "/runs", _cfg(model_path="/models/a\x00"), ["body", "config", "model_path"]),
    ("prompts surrogate", "/runs", _cfg(train_prompts="file:/models/\udc80"), ["body", "config", "train_prompts"]),
    (
        "reward option key surrogate",
        "/runs",
        _cfg(rewards=[{"name": "shapes", "options": {"\ud800": 1}}]),
        ["body", "config", "rewards", 0, "options"],
    ),
    (
        "override value NUL",
        "/runs",
        {"config": TINY, "overrides": {"train_prompts": "file:/a\x00"}},
        ["body", "overrides", "train_prompts"],
    ),
    (
        "tracker experiment NUL",
        "/runs",
        _cfg(trackers=[{"kind": "mlflow", "uri": "sqlite:///m.db", "experiment": "e\x00"}]),
        ["body", "config", "trackers", 0, "experiment"],
    ),
    ("1 MB variant name", "/comparisons", {"config": TINY, "variants": {MB: {"loss": "clip"}}}, ["body", "variants"]),
    (
        "variant name NUL",
        "/comparisons",
        {"config": TINY, "variants": {"a\x00": {"loss": "clip"}}},
        ["body", "variants"],
    ),
    (
        "300 variants",
        "/comparisons",
        {"config": TINY, "variants": {f"v{i}": {} for i in range(300)}},
        ["body", "variants"],
    ),
    (
        "comparison tag NUL",
        "/comparisons",
        {"config": TINY, "variants": {"a": {}}, "tags": ["\x00"]},
        ["body", "tags", 0],
    ),
]


@pytest.mark.parametrize(("label", "path", "body", "loc"), TEXT, ids=[c[0] for c in TEXT])
def test_bad_text_is_refused_alike_on_both_databases_and_nothing_is_stored(
    client, session, team, label, path, body, loc
):
    response = _send(client, team, "POST", path, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][: len(loc)] == loc
    assert len(response.content) < 4000  # the echo is bounded
    listed = client.get(f"{API}/runs", headers=team.headers)
    assert listed.status_code == 200 and listed.json()["data"] == []  # refused, not half-stored


def test_a_refused_surrogate_tag_leaves_the_team_run_list_working(client, session, team):
    assert _send(client, team, "POST", "/runs", {"config": TINY, "tags": ["ok", "\udfff"]}).status_code == 422
    assert (
        _send(client, team, "POST", "/runs", {"config": TINY, "tags": ["ok"], "name": "ünïcode ✓"}).status_code == 201
    )
    listed = client.get(f"{API}/runs", headers=team.headers)
    assert listed.status_code == 200 and [r["name"] for r in listed.json()["data"]] == ["ünïcode ✓"]


OVERRIDES = ["steps.a.b", "model.a.b", "lora_alpha.a.b", "rewards.7.weight", "rewards.x", "seed.0"]


@pytest.mark.parametrize("key", OVERRIDES)
def test_a_dotted_override_through_a_non_object_is_a_422_naming_it(client, team, key):
    run = _send(client, team, "POST", "/runs", {"config": TINY, "overrides": {key: 1}})
    assert run.status_code == 422, run.text
    assert run.json()["detail"][0]["loc"] == ["body", "overrides", key]
    assert repr(key) in run.json()["detail"][0]["msg"]
    comparison = _send(client, team, "POST", "/comparisons", {"config": TINY, "variants": {"v": {key: 1}}})
    assert comparison.status_code == 422, comparison.text
    assert comparison.json()["detail"][0]["loc"] == ["body", "variants", "v", key]


def _raw(fields: str) -> str:
    return '{"config": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "num_minibatches": 1, ' + fields + "}}"


NON_FINITE = [
    ("learning_rate NaN", _raw('"learning_rate": NaN'), ["body", "config", "learning_rate"]),
    (
        "reward weight NaN",
        _raw('"rewards": [{"name": "shapes", "weight": NaN}]'),
        ["body", "config", "rewards", 0, "weight"],
    ),
    ("weight_decay Infinity", _raw('"weight_decay": Infinity'), ["body", "config", "weight_decay"]),
    ("beta 1e400", _raw('"beta": 1e400'), ["body", "config", "beta"]),
    ("max_grad_norm -Infinity", _raw('"max_grad_norm": -Infinity'), ["body", "config", "max_grad_norm"]),
    ("sde_window NaN", _raw('"sde_window": [0.0, NaN]'), ["body", "config", "sde_window", 1]),
    ("override NaN", '{"overrides": {"learning_rate": NaN}}', ["body", "overrides", "learning_rate"]),
    ("override string NaN", '{"overrides": {"learning_rate": "NaN"}}', ["body", "overrides", "learning_rate"]),
    ("evaluate guidance NaN", '{"overrides": {"guidance_scale": "nan"}}', None),
]


@pytest.mark.parametrize(("label", "raw", "loc"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_numbers_are_a_422_the_handler_can_encode(client, session, team, label, raw, loc):
    path = "/runs" if loc is not None else f"/runs/{make_run(session, team_id=team.team_id)}/evaluate"
    response = _send(client, team, "POST", path, raw=raw)
    assert response.status_code == 422, response.text
    if loc is not None:
        assert response.json()["detail"][0]["loc"] == loc


SIZES = [
    ("P x G = 4096 x 512", _cfg(prompts_per_step=4096, group_size=512), "holds at most 4096 samples"),
    ("builtin at 2048 px", _cfg(resolution=2048), "resolution=2048"),
    (
        "remote reward file://",
        _cfg(rewards=[{"name": "remote", "options": {"url": "file:///etc/passwd"}}]),
        "http:// or https://",
    ),
    (
        "remote reward at an internal address",
        _cfg(rewards=[{"name": "remote", "options": {"url": "http://127.0.0.1:5432/"}}]),
        "REMOTE_REWARD_HOSTS",
    ),
]


@pytest.mark.parametrize(("label", "body", "message"), SIZES, ids=[c[0] for c in SIZES])
def test_what_the_api_can_know_is_refused_at_submission(client, services, team, label, body, message):
    response = _send(client, team, "POST", "/runs", body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"][0]["msg"]
    assert not any(m["args"] for m in _jobs(services, team))


def _jobs(services, team) -> list[dict]:
    with services.session() as s:
        mine = {r.id for r in store_runs.list_runs(s, team_id=team.team_id, limit=500)[0]}
    return [m for m in broker_messages(services) if m["args"][0] in mine]


def test_a_remote_reward_on_an_allowed_host_is_accepted(client, services, team, monkeypatch):
    monkeypatch.setattr(services.settings, "REMOTE_REWARD_HOSTS", "scorer.internal:8000, rewards.example.com")
    for url, status in [
        ("http://scorer.internal:8000/score", 201),
        ("https://rewards.example.com/v1", 201),  # a bare host allows every port
        ("http://scorer.internal:9000/score", 422),  # host:port allows that port only
        ("http://127.0.0.1:8000/", 422),
    ]:
        body = _cfg(rewards=[{"name": "remote", "options": {"url": url}}])
        assert _send(client, team, "POST", "/runs", body).status_code == status, url


def test_the_team_queue_cap_is_a_429(client, services, session, team, monkeypatch):
    monkeypatch.setattr(services.settings, "MAX_QUEUED_RUNS_PER_TEAM", 2)
    assert [_send(client, team, "POST", "/runs", {"config": TINY}).status_code for _ in range(2)] == [201, 201]
    over = _send(client, team, "POST", "/runs", {"config": TINY})
    assert over.status_code == 429 and "MAX_QUEUED_RUNS_PER_TEAM" in over.json()["detail"]
    comparison = _send(client, team, "POST", "/comparisons", {"config": TINY, "variants": {"a": {}, "b": {}}})
    assert comparison.status_code == 429
    first = client.get(f"{API}/runs", headers=team.headers).json()["data"][-1]["id"]
    assert client.post(f"{API}/runs/{first}/cancel", headers=team.headers).status_code == 200
    assert _send(client, team, "POST", "/runs", {"config": TINY}).status_code == 201  # a cancelled run frees room


def test_cancelling_a_queued_run_revokes_its_job(client, services, team, monkeypatch):
    revoked = []
    monkeypatch.setattr(services.queue, "revoke_run", lambda **kw: revoked.append(kw))
    run = _send(client, team, "POST", "/runs", {"config": TINY}).json()
    assert client.post(f"{API}/runs/{run['id']}/cancel", headers=team.headers).json()["status"] == "cancelled"
    assert revoked == [{"run_id": run["id"], "attempt": 1}]
    sent = [json.loads(p.read_text()) for p in (services.settings.broker_folder / "out").glob("*.msg")]
    assert f"run-{run['id']}-attempt-1" in {m["headers"]["id"] for m in sent}  # the id the revoke names


def test_a_cancel_revokes_every_attempts_id(monkeypatch):
    queue = TaskQueue(make_celery_app("memory://", "unused"))
    revoked = []
    monkeypatch.setattr(queue.app.control, "revoke", revoked.append)
    queue.revoke_run(run_id=5, attempt=3)  # a dead pool child's job comes back under attempt 1's or 2's id
    assert revoked == [["run-5-attempt-1", "run-5-attempt-2", "run-5-attempt-3"]]


def test_another_teams_sample_and_a_missing_one_answer_alike(client, services, session, team, other_team):
    data_dir = services.settings.DATA_DIR
    mine = [make_run(session, team_id=team.team_id) for _ in range(2)]
    theirs = make_run(session, team_id=other_team.team_id)
    (a,) = add_sample_images(session, data_dir=data_dir, run_id=mine[0], step=1, prompts=["p"])
    add_sample_images(session, data_dir=data_dir, run_id=mine[1], step=1, prompts=["p"])
    (foreign,) = add_sample_images(session, data_dir=data_dir, run_id=theirs, step=1, prompts=["p"])
    missing = foreign + 1000
    answers = {}
    for sample_id in (foreign, missing):
        vote = {"left_sample_id": sample_id, "right_sample_id": a, "choice": "left"}
        response = _send(client, team, "POST", "/reviews/votes", vote)
        answers[sample_id] = (response.status_code, response.json()["detail"].replace(str(sample_id), "N"))
    assert answers[foreign] == answers[missing] == (404, "sample N not found")


def test_422_answers_echo_at_most_a_bounded_input(client, team):
    response = _send(client, team, "POST", "/runs", {"preset": "y" * 99 + "z"})  # fits the column, unknown
    assert response.status_code == 422 and len(response.content) < 2500
    response = _send(client, team, "POST", "/runs", {"preset": MB})
    assert response.status_code == 422 and len(response.content) < 2000  # was 2 MB
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "preset"] and detail["input"].endswith("(1000000 characters)")


def test_the_openapi_lists_the_real_answers(client):
    paths = client.get(f"{API}/openapi.json").json()["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[f"{API}{path}"][method]["responses"])

    assert {"201", "401", "422", "429", "503"} <= codes("/runs", "post")
    assert {"200", "401", "404", "422"} <= codes("/runs/{run_id}", "get")
    assert {"401", "404", "409"} <= codes("/runs/{run_id}", "delete")
    assert {"401", "404", "409", "429"} <= codes("/runs/{run_id}/evaluate", "post")
    assert {"401", "404"} <= codes("/comparisons/{comparison_id}", "get")
    assert {"401", "422", "429"} <= codes("/comparisons", "post")
    assert {"401", "403", "409"} <= codes("/teams", "post")
    assert {"401", "404", "409"} <= codes("/reviews/votes", "post")
    assert {"401", "404"} <= codes("/runs/{run_id}/metrics", "get")
