"""The typed Python client and the CLI commands on top of it, against the real app (TestClient as transport)."""

from __future__ import annotations

import pytest
from api_helpers import TINY
from factories import add_points, make_run, make_team_token
from rich.progress import Progress

import flowdppo
from api import cli
from api.client import ApiError, Client
from api.schemas import RunFilter
from store import lifecycle as store_lifecycle
from store import runs as store_runs
from store import teams as store_teams


@pytest.fixture
def api_client(client, team) -> Client:
    return Client(token=team.token, http=client)


def test_client_round_trip(api_client, client, session, team):
    run = api_client.create_run(preset="shapes-dppo", overrides=TINY, tags=["c"])
    assert api_client.get_run(run.id).config["steps"] == 2
    for _ in range(3):
        api_client.create_run(preset="shapes-clip", overrides=TINY)
    assert [r.id for r in api_client.iter_runs(limit=2)] == sorted(
        (r.id for r in api_client.iter_runs()), reverse=True
    )
    assert len(list(api_client.iter_runs(limit=2))) == 4
    with pytest.raises(ApiError) as err:
        api_client.create_run(preset="shapes-dppo", overrides={"group_size": 1})
    assert err.value.status_code == 422 and "overrides.group_size" in str(err.value)
    comparison = api_client.create_comparison({"a": {}, "b": {"loss": "clip"}}, preset="shapes-dppo", overrides=TINY)
    assert [r.variant for r in api_client.get_comparison(comparison.id).runs] == ["a", "b"]
    assert api_client.cancel_run(run.id).status == "cancelled"
    assert [r.id for r in api_client.iter_runs(RunFilter(status="cancelled", kind="train", tag="c"))] == [run.id]
    assert {p.name for p in api_client.presets()} >= {
        "shapes-dppo",
        "shapes-clip",
        "shapes-cps-dppo",
        "shapes-cps-clip",
    }
    assert api_client.me().name == team.name and api_client.health().status == "ok"


def test_client_stream_and_summaries(api_client, session, team):
    run = make_run(session, team_id=team.team_id, status="running")
    add_points(session, run_id=run, steps=range(3), keys={"reward/total/mean": 0.5, "mask/fraction": 0.1})
    store_lifecycle.finish_run(session, run_id=run, status="succeeded")
    session.commit()
    events = list(api_client.stream(run))
    assert [e.data["step"] for e in events if e.event == "metrics"] == [0, 1, 2]
    assert events[-1].event == "end" and events[-1].data == {"status": "succeeded"}
    (summary,) = api_client.summaries([run]).data
    assert summary.metrics["reward/total/mean"].final == 0.502 and summary.metrics["mask/fraction"].best == 0.1
    assert api_client.metrics([run], keys=["mask/fraction"]).data[0].steps == [0, 1, 2]


@pytest.fixture
def cli_client(monkeypatch, api_client):
    monkeypatch.setattr(cli, "_client", lambda args: api_client)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables at full width


def test_cli_submit_runs_cancel_compare_watch(cli_client, capsys, session, team):
    assert flowdppo.main(["submit", "shapes-dppo", "--set", "steps=2", "--set", "prompts_per_step=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run ") and "queued" in out
    run_id = int(out.split()[1])
    assert flowdppo.main(["submit", "shapes-dppo", "--set", "loss=ppo"]) == 2
    assert "overrides.loss" in capsys.readouterr().err
    assert flowdppo.main(["runs"]) == 0
    assert str(run_id) in capsys.readouterr().out
    assert flowdppo.main(["cancel", str(run_id)]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert flowdppo.main(["runs", "--status", "cancelled", "--kind", "train"]) == 0
    assert f"\n│ {run_id} " in capsys.readouterr().out
    assert flowdppo.main(["runs", "--status", "queued"]) == 0
    assert f"\n│ {run_id} " not in capsys.readouterr().out
    done = make_run(session, team_id=team.team_id, status="running", name="mine")
    add_points(session, run_id=done, steps=range(4), keys={"reward/total/mean": 0.25, "kl_ref/mean": 0.01})
    store_lifecycle.finish_run(session, run_id=done, status="succeeded")
    session.commit()
    assert flowdppo.main(["compare", str(done), str(run_id)]) == 0
    table = capsys.readouterr().out
    assert "0.253" in table and "0.013" in table and "cancelled" in table
    assert flowdppo.main(["watch", str(done)]) == 0
    assert f"run {done}: succeeded" in capsys.readouterr().out


def test_cli_watch_counts_finished_training_steps(cli_client, capsys, monkeypatch, session, team):
    done = make_run(session, team_id=team.team_id, status="running")
    add_points(session, run_id=done, steps=range(4), keys={"reward/total/mean": 0.25})  # 0: the base evaluation
    attempt = store_runs.get_run(session, run_id=done).attempt
    store_lifecycle.heartbeat(session, run_id=done, attempt=attempt, step=3, progress=0.3)  # 3 of 10 steps trained
    store_lifecycle.finish_run(session, run_id=done, status="succeeded")
    session.commit()
    completed = []
    update = Progress.update

    def record(self, task, **fields):
        if "completed" in fields:
            completed.append(fields["completed"])
        update(self, task, **fields)

    monkeypatch.setattr(Progress, "update", record)
    assert flowdppo.main(["watch", str(done)]) == 0
    assert completed[-1] == 3 and 0 in completed and max(completed) == 3  # never a step ahead of the run
    assert f"run {done}: succeeded" in capsys.readouterr().out


def test_cli_submit_config_file(cli_client, capsys, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("loss: clip\nsteps: 3\nprompts_per_step: 2\n")
    assert flowdppo.main(["submit", str(path), "--name", "from-file"]) == 0
    assert "from-file" in capsys.readouterr().out


def test_cli_token_create(monkeypatch, capsys, services, session):
    monkeypatch.setenv("DATABASE_URL", services.settings.DATABASE_URL)
    assert flowdppo.main(["token", "create", "--team", "cli-team-x", "--admin"]) == 0
    token = capsys.readouterr().out.strip()
    row = store_teams.authenticate_token(session, plaintext=token)
    assert row is not None and row.is_admin and row.team.name == "cli-team-x"
    session.commit()


def test_cli_token_list_and_revoke(monkeypatch, capsys, services, session):
    monkeypatch.setenv("DATABASE_URL", services.settings.DATABASE_URL)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables at full width
    member = make_team_token(session)
    row, admin_token = store_teams.create_token(session, team_id=member.team_id, is_admin=True)
    session.commit()
    assert flowdppo.main(["token", "revoke", str(row.id)]) == 0
    assert f"token {row.id} ({row.prefix}, admin) revoked at" in capsys.readouterr().out
    assert store_teams.authenticate_token(session, plaintext=admin_token) is None
    assert store_teams.authenticate_token(session, plaintext=member.token) is not None
    session.commit()
    assert flowdppo.main(["token", "revoke", str(row.id)]) == 0  # twice: still revoked, no error
    capsys.readouterr()

    assert flowdppo.main(["token", "list", "--team", member.name]) == 0
    out = capsys.readouterr().out
    (header,) = [line.split() for line in out.splitlines() if "┃" in line]  # rich's heavy header bars
    assert [cell for cell in header if cell != "┃"] == ["id", "prefix", "role", "created", "revoked"]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    tokens = store_teams.list_tokens(session, team_id=member.team_id)
    assert [(int(r[0]), r[1], r[2], bool(r[4])) for r in rows] == [
        (t.id, t.prefix, "admin" if t.is_admin else "member", t.revoked_at is not None) for t in tokens
    ]
    for secret in (member.token, admin_token):
        assert secret not in out and secret.split("_", 2)[2] not in out  # fdp_<prefix>_<secret>

    assert flowdppo.main(["token", "list", "--team", "no-such-team"]) == 2
    assert "no team 'no-such-team'" in capsys.readouterr().err
    assert flowdppo.main(["token", "revoke", "987654321"]) == 2
    assert "no token 987654321" in capsys.readouterr().err


def test_cli_runs_fits_80_columns_one_line_per_run(cli_client, capsys, monkeypatch, session, team):
    monkeypatch.setenv("COLUMNS", "80")  # a default terminal: the table must not wrap its rows
    long_name = "demo: clip vs dppo · a long variant name that does not fit"
    ids = [make_run(session, team_id=team.team_id, status="running", name=long_name) for _ in range(2)]
    for run_id in ids:
        store_runs.get_run(session, run_id=run_id).worker = "worker-1234567@a-long-hostname.example.org"
    session.commit()
    assert flowdppo.main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    rows = [line for line in lines if line.startswith("│ ")]
    for run_id in ids:
        (row,) = [r for r in rows if r.startswith(f"│ {run_id} ")]  # one line per run
        assert "demo: clip" in row and "…" in row and "running" in row
