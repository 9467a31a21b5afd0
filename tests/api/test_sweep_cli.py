"""`flowdppo sweep submit|show` against the real app (TestClient as transport), on both databases."""

from __future__ import annotations

import pytest
from factories import add_points

import flowdppo
from api import cli, sweep_cli
from api.client import Client
from store import runs as store_runs
from store.session import begin_write


@pytest.fixture
def api_client(client, team, monkeypatch) -> Client:
    api_client = Client(token=team.token, http=client)
    monkeypatch.setattr(cli, "_client", lambda args: api_client)
    return api_client


def test_parsers():
    assert sweep_cli.parse_seeds("3") == [0, 1, 2] and sweep_cli.parse_seeds("4,7") == [4, 7]
    assert sweep_cli.parse_grid(["delta=1e-5,1e-6"]) == {"delta": [1e-5, 1e-6]}
    assert sweep_cli.parse_variants([["clip", "loss=clip"], ["dppo"]]) == {"clip": {"loss": "clip"}, "dppo": {}}
    assert sweep_cli.parse_variants([]) == {"clip": {"loss": "clip"}, "dppo": {"loss": "dppo"}}
    with pytest.raises(ValueError):
        sweep_cli.parse_seeds("0")
    with pytest.raises(ValueError, match="give PRESET_OR_CONFIG first"):
        sweep_cli.parse_variants([["dppo", "shapes-dppo"]])


def test_sweep_submit_then_show(api_client, capsys, session, team):
    argv = ["sweep", "submit", "shapes-dppo", "--seeds", "3", "--set", "steps=2", "--set", "prompts_per_step=2"]
    argv += ["--variant", "clip", "loss=clip", "--variant", "dppo", "--grid", "delta=1e-5,1e-6", "--grid-variant"]
    argv += ["dppo", "--name", "cli sweep"]
    assert flowdppo.main(argv) == 0
    out = capsys.readouterr().out
    assert "9 runs = 3 variants x 3 seeds" in out and "dppo delta=1e-06" in out
    comparison_id = int(out.split()[1])
    comparison = api_client.get_comparison(comparison_id)
    assert sorted({(r.variant, r.seed) for r in comparison.runs}) == sorted(
        (v, s) for v in ("clip", "dppo delta=1e-05", "dppo delta=1e-06") for s in range(3)
    )
    for run in comparison.runs:
        add_points(session, run_id=run.id, steps=range(0, 3), keys={"eval/reward/total/mean": 0.5 + run.seed / 100})
    begin_write(session)
    store_runs.get_run(session, run_id=comparison.runs[0].id).status = "failed"
    session.commit()
    assert flowdppo.main(["sweep", "show", str(comparison_id)]) == 0
    table = capsys.readouterr().out
    assert "95% Student-t" in table and "dppo delta=1e-05" in table
    assert "3 (2/1)" in table  # clip: 3 runs, 2 in the aggregate, 1 failed
    assert "0.512 [" in table  # dppo's final reward over seeds 0, 1, 2: mean 0.512 with an interval

    assert flowdppo.main(["sweep", "submit", "shapes-dppo", "--seeds", "40", "--variant", "a", "--variant", "b"]) == 2
    assert "body.seeds" in capsys.readouterr().err  # 80 runs > 64: refused, naming the field
