"""The dashboard's seed views without a browser: the aggregate figures (bands, frontier, the de-zigzagged
reward-vs-KL path), Compare's aggregate view of a seeded 3-seed sweep with a failed run, Samples' seed pickers."""

from __future__ import annotations

import pytest
from factories import TeamToken, make_team_token

from api.services import Services
from ui import plots, sweep
from worker.seed_sweep import seed_sweep


@pytest.fixture(scope="module")
def swept(services: Services) -> tuple[TeamToken, int, dict]:
    with services.session() as session:
        owner = make_team_token(session)
        group, ids = seed_sweep(
            session, team_id=owner.team_id, data_dir=services.settings.DATA_DIR, steps=40, failed=("clip", 2)
        )
    return owner, group, ids


def test_band_figure_fills_between_hi_and_lo_per_variant() -> None:
    bands = {
        "eval/reward/total/mean": [
            plots.Band("clip (n=3)", "#4e79a7", [0, 10], [0.6, 0.7], [0.55, 0.65], [0.65, 0.75], [3, 3]),
            plots.Band("dppo (n=1)", "#f28e2b", [0, 10], [0.6, 0.8], [None, None], [None, None], [1, 1]),
        ]
    }
    fig = plots.band_figure(bands, x_title="rollouts (images)")
    assert [t.meta for t in fig.data] == ["band", "band", "mean"] * 2
    hi, lo, mean = fig.data[:3]
    assert lo.fill == "tonexty" and list(lo.y) == [0.55, 0.65] and list(hi.y) == [0.65, 0.75]
    assert [t.name for t in fig.data if t.showlegend] == ["clip (n=3)", "dppo (n=1)"]
    assert fig.layout.xaxis.title.text == "rollouts (images)"


def test_frontier_figure_marks_the_start_and_the_direction() -> None:
    f = plots.Frontier("dppo", "#f28e2b", [0.0, 1e-3, 2e-3], [0.6, 0.7, 0.68], [0, 10, 20], [0.0, 1e-3], [0.6, 0.7])
    fig = plots.frontier_figure([f])
    path, envelope = fig.data
    assert path.meta == "path" and list(path.marker.symbol) == ["circle-open", "arrow", "arrow"]
    assert path.marker.angleref == "previous" and list(path.customdata) == [0, 10, 20]
    assert envelope.meta == "envelope" and envelope.line.dash == "dash" and envelope.line.shape == "hv"


def test_reward_kl_path_is_averaged_into_at_most_twelve_points() -> None:
    steps = list(range(1, 121))
    kl = [s * 1e-5 for s in steps]
    reward = [0.6 + (0.01 if s % 2 else -0.01) for s in steps]  # a zigzag
    fig = plots.reward_kl_figure({1: (kl, reward, steps)}, labels={1: "#1"}, colors={1: "#4e79a7"})
    (trace,) = fig.data
    assert len(trace.x) == plots.REWARD_KL_POINTS and list(trace.customdata)[-1] == 120
    assert max(trace.y) - min(trace.y) < 1e-9  # the zigzag averages out
    assert list(trace.marker.symbol)[:2] == ["circle-open", "arrow"]


def test_aggregate_view_of_a_three_seed_sweep(services: Services, swept) -> None:  # noqa: ANN001
    owner, _, ids = swept
    view = sweep.aggregate_view(services, owner.token, list(ids.values()), ["eval/reward/total/mean"], "step")
    means = [t for t in view.chart.data if t.meta == "mean"]
    assert [t.name for t in means] == ["clip (n=2)", "dppo (n=3)"]  # clip seed 2 failed
    assert list(means[1].x) == [0, 10, 20, 30, 40]
    summary = view.summary.set_index("variant")
    assert summary.loc["clip", "runs (in / failed)"] == "3 (2 / 1)"
    assert summary.loc["dppo", "final held-out reward"].count("[") == 1  # an interval
    assert f"#{ids[('clip', 2)]} clip seed 2 (failed)" in view.note and "Student-t" in view.note
    assert [t.meta for t in view.frontier.data].count("path") == 2
    rollouts = sweep.aggregate_view(services, owner.token, list(ids.values()), ["eval/reward/total/mean"], "rollouts")
    assert list(next(t for t in rollouts.chart.data if t.meta == "mean").x)[1] == 10 * 16 * 8  # P x G per step


def test_samples_seed_and_prompt_across_variants(services: Services, swept) -> None:  # noqa: ANN001
    owner, group, ids = swept
    assert sweep.seed_choices(services, owner.token, group) == [("seed 0", 0), ("seed 1", 1), ("seed 2", 2)]
    assert sweep.runs_of_seed(services, owner.token, group, 1) == [ids[("clip", 1)], ids[("dppo", 1)]]
    prompts, table = sweep.prompt_across_variants(services, owner.token, group, None)
    assert prompts[0] == "a red circle" and table.count("<img") == 6  # 2 variants x 3 seeds
    assert "seed 2" in table and "step 20" in table  # the failed run shows its last logged samples
    _, other = sweep.prompt_across_variants(services, owner.token, group, "three purple stars")
    assert "three purple stars" in other


def test_submit_sweep_from_the_form(services: Services, team: TeamToken) -> None:
    from api.services.errors import InvalidConfigError

    ids = sweep.submit_sweep(
        services,
        team.token,
        preset="shapes-dppo",
        overrides="steps=3 prompts_per_step=2",
        variants="clip: loss=clip\ndppo:",
        seeds="0,1",
        grid="delta=1e-6,1e-7",
        grid_variants="dppo",
        name="form sweep",
    )
    assert len(ids) == (1 + 2) * 2
    with services.session() as session:
        from api.services import runs as run_service

        runs = [run_service.get_owned_run(session, team_id=team.team_id, run_id=i) for i in ids]
        assert {(r.variant, r.seed) for r in runs} == {
            (v, s) for v in ("clip", "dppo delta=1e-06", "dppo delta=1e-07") for s in (0, 1)
        }
        assert all(r.config["steps"] == 3 and r.config["seed"] == r.seed for r in runs)
    with pytest.raises(InvalidConfigError) as err:
        sweep.submit_sweep(services, team.token, preset="shapes-dppo", seeds="40", variants="a:\nb:")
    assert "body.seeds" in err.value.message
    assert sweep.parse_variant_lines("") == {"clip": {"loss": "clip"}, "dppo": {"loss": "dppo"}}
