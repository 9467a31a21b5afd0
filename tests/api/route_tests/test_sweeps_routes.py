"""Sweeps through REST: variants x grid x seeds become that many queued runs with the right configs, bounded sizes
are 422s naming the field, and nothing is stored or queued when any cell is invalid (both databases)."""

from __future__ import annotations

from api_helpers import API, TINY, jobs_for

from store import runs as store_runs


def test_sweep_creates_variants_x_grid_x_seeds_runs(client, services, team):
    body = {
        "name": "delta sweep",
        "preset": "shapes-dppo",
        "overrides": TINY,
        "variants": {"clip": {"loss": "clip"}, "dppo": {"loss": "dppo"}},
        "grid": {"delta": [1e-5, 1e-6, 1e-7]},
        "grid_variants": ["dppo"],
        "seeds": [0, 1, 2],
    }
    r = client.post(f"{API}/comparisons", json=body, headers=team.headers)
    assert r.status_code == 201, r.text
    comparison = r.json()
    assert comparison["seeds"] == [0, 1, 2] and comparison["grid"] == {"delta": [1e-5, 1e-6, 1e-7]}
    names = ["clip", "dppo delta=1e-05", "dppo delta=1e-06", "dppo delta=1e-07"]
    assert [v["name"] for v in comparison["variants"]] == names
    assert comparison["variants"][2]["overrides"] == {"loss": "dppo", "delta": 1e-6}
    runs = comparison["runs"]
    assert len(runs) == 4 * 3  # (1 clip + 3 dppo grid points) x 3 seeds
    got = {(run["variant"], run["seed"]): run for run in runs}
    assert set(got) == {(name, seed) for name in names for seed in (0, 1, 2)}
    for (name, seed), run in got.items():
        config = run["config"]
        assert config["seed"] == seed and config["steps"] == TINY["steps"]
        assert config["loss"] == ("clip" if name == "clip" else "dppo")
        if name != "clip":
            assert config["delta"] == float(name.split("=")[1])
        else:
            assert config["delta"] == 1e-5  # the grid applies to dppo only; clip keeps the preset's delta
        assert run["name"] == f"delta sweep / {name} / seed {seed}"
        assert jobs_for(services, run["id"]) == [
            {"task": "worker.tasks.train_run", "args": [run["id"]], "queue": "train"}
        ]
    # read back grouped: the comparison, and GET /runs?comparison_id= (the list items carry variant and seed)
    again = client.get(f"{API}/comparisons/{comparison['id']}", headers=team.headers).json()
    assert [(run["variant"], run["seed"]) for run in again["runs"]] == [(run["variant"], run["seed"]) for run in runs]
    listed = client.get(
        f"{API}/runs", params={"comparison_id": comparison["id"], "limit": 50}, headers=team.headers
    ).json()
    assert listed["count"] == 12 and {item["seed"] for item in listed["data"]} == {0, 1, 2}


def test_plain_comparison_runs_carry_the_config_seed(client, team):
    body = {"preset": "shapes-dppo", "overrides": {**TINY, "seed": 7}, "variants": {"a": {}, "b": {"loss": "clip"}}}
    comparison = client.post(f"{API}/comparisons", json=body, headers=team.headers).json()
    assert comparison["seeds"] is None and comparison["grid"] is None
    assert [(r["variant"], r["seed"], r["name"]) for r in comparison["runs"]] == [
        ("a", 7, "shapes-dppo / a"),
        ("b", 7, "shapes-dppo / b"),
    ]


def test_sweep_over_the_run_limit_is_422_naming_the_field(client, services, team):
    before = len(services.queue.sent)
    base = {"preset": "shapes-dppo", "overrides": TINY, "variants": {"clip": {"loss": "clip"}, "dppo": {}}}
    too_many_seeds = {**base, "seeds": list(range(40))}  # 2 x 40 = 80 > 64
    r = client.post(f"{API}/comparisons", json=too_many_seeds, headers=team.headers)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "seeds"] and "80 runs" in error["msg"] and "64" in error["msg"]
    big_grid = {**base, "grid": {"delta": [1e-5, 1e-6, 1e-7, 1e-8], "learning_rate": [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]}}
    big_grid["grid"]["clip_range"] = [1e-4, 2e-4]  # 2 variants x 40 points = 80 cells > 64
    r = client.post(f"{API}/comparisons", json=big_grid, headers=team.headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "grid"]
    too_many_seeds_schema = {**base, "seeds": list(range(65))}
    r = client.post(f"{API}/comparisons", json=too_many_seeds_schema, headers=team.headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "seeds"]
    repeated = {**base, "seeds": [1, 1]}
    r = client.post(f"{API}/comparisons", json=repeated, headers=team.headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "seeds"]
    unknown = {**base, "grid": {"delta": [1e-6]}, "grid_variants": ["ppo"]}
    r = client.post(f"{API}/comparisons", json=unknown, headers=team.headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "grid_variants"]
    assert len(services.queue.sent) == before


def test_bad_grid_value_is_422_at_the_grid_key_and_nothing_is_stored(client, services, team):
    before = len(services.queue.sent)
    body = {
        "preset": "shapes-dppo",
        "overrides": TINY,
        "variants": {"dppo": {}},
        "grid": {"delta": [1e-6, -1.0]},
        "seeds": [0, 1],
    }
    r = client.post(f"{API}/comparisons", json=body, headers=team.headers)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "grid", "delta"]]
    assert len(services.queue.sent) == before
    with services.session() as s:
        assert store_runs.list_runs(s, team_id=team.team_id) == ([], None)


def test_a_huge_grid_is_refused_without_being_enumerated(client, team):
    values = [1e-5 * (i + 1) for i in range(16)]
    body = {
        "preset": "shapes-dppo",
        "variants": {"dppo": {}},
        "grid": {"delta": values, "clip_range": values, "learning_rate": values, "beta": values},  # 65,536 points
    }
    r = client.post(f"{API}/comparisons", json=body, headers=team.headers)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "grid"] and "65536 runs" in error["msg"]
