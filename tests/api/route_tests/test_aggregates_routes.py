"""GET /comparisons/{id}/aggregate on both databases: a 3-seed sweep's means and 95% t-intervals equal a direct
computation, failed and cancelled runs are counted and left out, and the metrics are read in one query."""

from __future__ import annotations

import math

import numpy as np
from api_helpers import API, TINY
from sqlalchemy import event

from store import lifecycle
from store import metrics as store_metrics
from store import runs as store_runs
from store.session import begin_write

T_975 = {2: 4.302652729749464}  # t(0.975, df): NIST/SEMATECH e-Handbook 1.3.6.7.2, 4.303 at 2 dof


def _sweep(client, team, seeds=(0, 1, 2)):
    body = {
        "name": "seeds",
        "preset": "shapes-dppo",
        "overrides": {**TINY, "steps": 20},
        "variants": {"clip": {"loss": "clip"}, "dppo": {}},
        "seeds": list(seeds),
    }
    r = client.post(f"{API}/comparisons", json=body, headers=team.headers)
    assert r.status_code == 201, r.text
    return r.json()


def _log(session, run_id: int, gain: float, kl_rate: float) -> None:
    """Held-out reward every 5 steps (0..20) = 0.5 + gain·step, KL every step = kl_rate·step."""
    rows = [(s, "eval/reward/total/mean", 0.5 + gain * s) for s in range(0, 21, 5)]
    rows += [(s, "kl_ref/mean", kl_rate * s) for s in range(1, 21)]
    rows += [(s, "reward/total/mean", 0.4 + gain * s) for s in range(1, 21)]
    store_metrics.append_metrics(session, run_id=run_id, rows=rows)


def _set_status(session, run_id: int, status: str) -> None:
    begin_write(session)
    store_runs.get_run(session, run_id=run_id).status = status
    session.commit()


def test_aggregate_matches_a_direct_computation_and_leaves_failed_runs_out(client, services, session, team):
    comparison = _sweep(client, team)
    runs = {(r["variant"], r["seed"]): r["id"] for r in comparison["runs"]}
    gains = {"clip": (0.010, 0.012, 0.014), "dppo": (0.020, 0.016, 0.018)}
    for variant, per_seed in gains.items():
        for seed, gain in enumerate(per_seed):
            _log(session, runs[(variant, seed)], gain, kl_rate=1e-4 * (seed + 1) if variant == "clip" else 5e-5)
            _set_status(session, runs[(variant, seed)], "succeeded")
    # dppo seed 2 failed, clip seed 2 was cancelled after logging: both stay listed but leave the means
    lifecycle.request_cancel(session, run_id=runs[("clip", 2)])
    _set_status(session, runs[("clip", 2)], "cancelled")
    _set_status(session, runs[("dppo", 2)], "failed")

    r = client.get(f"{API}/comparisons/{comparison['id']}/aggregate", headers=team.headers)
    assert r.status_code == 200, r.text
    agg = r.json()
    assert agg["interval"].startswith("95% Student-t")
    by = {v["variant"]: v for v in agg["variants"]}
    assert list(by) == ["clip", "dppo"]
    for name in by:
        v = by[name]
        assert (v["n_runs"], v["n_included"], v["n_failed"], v["n_active"]) == (3, 2, 1, 0)
        assert [(run["seed"], run["included"]) for run in v["runs"]] == [(0, True), (1, True), (2, False)]
        assert v["rollouts_per_step"] == TINY["prompts_per_step"] * TINY["group_size"]

    # final held-out reward of dppo: seeds 0 and 1 (0.5 + 20·gain), interval with t(0.975, 1)
    finals = np.array([0.5 + 20 * g for g in gains["dppo"][:2]])
    half = 12.706204736174705 * finals.std(ddof=1) / math.sqrt(2)
    got = by["dppo"]["final_reward"]
    assert got["n"] == 2 and math.isclose(got["mean"], finals.mean(), rel_tol=1e-12)
    assert math.isclose(got["hi"] - got["mean"], half, rel_tol=1e-9)
    # area under the held-out curve of a straight line = its value at the middle step
    assert math.isclose(by["clip"]["auc"]["mean"], np.mean([0.5 + 10 * g for g in gains["clip"][:2]]), rel_tol=1e-12)
    assert math.isclose(by["clip"]["final_kl"]["mean"], np.mean([2e-3, 4e-3]), rel_tol=1e-12)
    # default budget: the smallest mean final KL (dppo's 1e-3); clip seed 0 reaches it at step 10, seed 1 at step 5
    assert math.isclose(agg["kl_budget"], 1e-3, rel_tol=1e-12)
    within = by["clip"]["reward_at_kl"]
    assert within["n"] == 2 and math.isclose(within["mean"], np.mean([0.5 + 10 * 0.010, 0.5 + 5 * 0.012]))

    # the band of the held-out curve, step by step
    (band,) = [c for c in by["dppo"]["curves"] if c["key"] == "eval/reward/total/mean"]
    assert band["steps"] == [0, 5, 10, 15, 20] and band["n"] == [2] * 5
    assert band["rollouts"] == [s * 4 for s in band["steps"]]
    at_10 = np.array([0.5 + 10 * g for g in gains["dppo"][:2]])
    assert math.isclose(band["mean"][2], at_10.mean())
    assert math.isclose(band["lo"][2], at_10.mean() - 12.706204736174705 * at_10.std(ddof=1) / math.sqrt(2))
    # frontier: mean KL and mean reward at each eval step, the envelope rising with KL
    frontier = by["dppo"]["frontier"]
    assert frontier["steps"] == band["steps"] and frontier["kl"][0] == 0.0
    assert frontier["envelope_reward"] == sorted(frontier["envelope_reward"])

    # an explicit budget, and a curve key of choice
    r = client.get(
        f"{API}/comparisons/{comparison['id']}/aggregate",
        params={"kl_budget": 1e-9, "key": "reward/total/mean"},
        headers=team.headers,
    ).json()
    assert r["kl_budget"] == 1e-9
    clip = r["variants"][0]
    assert clip["reward_at_kl"]["mean"] == np.mean([0.5, 0.5])  # only the base (step 0, KL 0) is within budget
    assert [c["key"] for c in clip["curves"]] == ["reward/total/mean"]


def test_three_seeds_use_t_with_two_dof_and_one_seed_has_no_band(client, session, team):
    comparison = _sweep(client, team)
    runs = {(r["variant"], r["seed"]): r["id"] for r in comparison["runs"]}
    for seed in range(3):
        _log(session, runs[("dppo", seed)], 0.01 * (seed + 1), 1e-4)
    _log(session, runs[("clip", 0)], 0.01, 1e-4)
    for seed in (1, 2):
        _set_status(session, runs[("clip", seed)], "failed")
    agg = client.get(f"{API}/comparisons/{comparison['id']}/aggregate", headers=team.headers).json()
    dppo, clip = agg["variants"][1], agg["variants"][0]
    finals = np.array([0.5 + 20 * 0.01 * (s + 1) for s in range(3)])
    iv = dppo["final_reward"]
    assert iv["n"] == 3 and math.isclose(iv["hi"] - iv["mean"], T_975[2] * finals.std(ddof=1) / math.sqrt(3))
    assert dppo["n_active"] == 3  # still "queued": included with what they logged
    assert clip["n_included"] == 1 and clip["n_failed"] == 2
    assert clip["final_reward"]["lo"] is None and clip["final_reward"]["mean"] == 0.5 + 20 * 0.01
    (band,) = [c for c in clip["curves"] if c["key"] == "eval/reward/total/mean"]
    assert band["lo"] == [None] * 5 and band["n"] == [1] * 5


def test_metrics_are_read_in_one_query_whatever_the_number_of_runs(client, services, session, team):
    comparison = _sweep(client, team, seeds=tuple(range(8)))  # 16 runs
    for run in comparison["runs"]:
        _log(session, run["id"], 0.01, 1e-4)
    engine = session.get_bind()
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001, ANN002
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = client.get(f"{API}/comparisons/{comparison['id']}/aggregate", headers=team.headers)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert r.status_code == 200
    assert sum("FROM metrics" in s for s in statements) == 1, statements
    assert len(statements) <= 8, statements  # token, comparison, runs, metrics: a constant, not one per run


def test_aggregate_of_another_teams_comparison_is_404(client, team, other_team):
    comparison = _sweep(client, team, seeds=(0,))
    r = client.get(f"{API}/comparisons/{comparison['id']}/aggregate", headers=other_team.headers)
    assert r.status_code == 404
