"""The functions behind each tab, on a real database and broker: what they return for seeded and submitted runs."""

from __future__ import annotations

import os
import tarfile
import time
from datetime import timedelta
from pathlib import Path

import gradio as gr
import pytest
from factories import TeamToken, make_team_token, mark_running

from api.services import Services
from api.services import runs as run_service
from api.services import samples as sample_service
from store import metrics
from store import runs as store_runs
from trainer.config import TrainConfig
from trainer.loss_registry import LOSSES
from ui import compare, detail, review, runs, samples, submit
from ui.app import CACHE_CLEANUP, build_dashboard, latest_group, login
from ui.common import comparison_choices, latest_run_id, run_choices
from worker.seed import seed_comparison


def test_every_handler_refuses_a_missing_or_foreign_token(services: Services, seeded: tuple) -> None:
    owner, _, run_ids = seeded
    with pytest.raises(gr.Error, match="Log in"):
        runs.runs_table(services, "", "all", "")
    with pytest.raises(gr.Error, match="Log in"):
        compare.compare_view(services, "flowdppo_bad_token", run_ids, None)
    with services.session() as session:
        stranger = make_team_token(session)
    with pytest.raises(gr.Error, match="not found"):  # another team's run is a missing one (the service's rule)
        compare.compare_view(services, stranger.token, run_ids, None)
    with pytest.raises(gr.Error, match="Unknown or revoked token"):
        login(services, "flowdppo_x_y")
    token, who, cleared, *_ = login(services, owner.token)
    assert token == owner.token and owner.name in who and cleared == ""


def test_dashboard_builds_with_explicit_api_names(services: Services) -> None:
    demo = build_dashboard(services)
    for dep in demo.config["dependencies"]:
        # every event either has a name we chose or is private (no auto-named endpoints like "/lambda_3")
        assert dep["api_visibility"] == "private" or not dep["api_name"].startswith(("lambda", "fn")), dep["api_name"]
    names = {d["api_name"] for d in demo.config["dependencies"] if d["api_visibility"] != "private"}
    assert {"login", "runs", "compare", "samples_grid", "submit_comparison", "review_pair", "vote_left"} <= names


def test_runs_table_progress_reward_filters_and_timer(services: Services, seeded: tuple) -> None:
    owner, group, (clip, dppo) = seeded
    view = runs.runs_table(services, owner.token, "all", "")
    rows = view.frame.set_index("id")
    assert set(rows.index) >= {clip, dppo} and not view.active  # all finished: the timer may stop
    assert rows.loc[dppo, "status"] == "succeeded" and rows.loc[dppo, "progress"].endswith("100%")
    assert float(rows.loc[dppo, "reward"]) > 0.6 and rows.loc[dppo, "worker"] == "celery@seeded"
    assert rows.loc[dppo, "elapsed"] == "1:03" and rows.loc[dppo, "group"] == group
    assert runs.runs_table(services, owner.token, "failed", "").frame.empty
    assert runs.runs_table(services, owner.token, "all", "no-such-tag").frame.empty


def test_cancel_from_the_table_and_the_timer_runs_while_something_is_active(
    services: Services, team: TeamToken
) -> None:
    [run_id] = submit.submit(
        services,
        team.token,
        submit.form_specs(),
        "shapes-dppo",
        submit.preset_values(submit.form_specs(), "shapes-dppo"),
        tags="x",
    )
    view = runs.runs_table(services, team.token, "queued", "x")
    assert view.active and list(view.frame["id"]) == [run_id]
    assert "cancelled" in runs.cancel_run(services, team.token, run_id)
    assert not runs.runs_table(services, team.token, "all", "").active
    with services.session() as session:
        other = store_runs.create_run(session, team_id=team.team_id, config={"steps": 10}).id
        mark_running(session, other, step=4, total=10)
    row = runs.runs_table(services, team.token, "running", "").frame.iloc[0]
    assert row["progress"].startswith("████░") and row["step"] == "4/10"
    assert compare.compare_view(services, team.token, [other], ["grad_norm"]).active  # charts stay live too
    assert "stops after its current step" in runs.cancel_run(services, team.token, other)


def test_config_form_covers_every_field_in_its_group() -> None:
    groups = submit.config_groups()
    fields = [n for names in groups.values() for n in names]
    assert sorted(fields) == sorted(TrainConfig.model_fields)  # a new field shows up without a UI change
    assert {"model", "loss", "optimisation"} <= set(groups) and "loss" in groups["loss"]
    specs = {s.name: s for s in submit.form_specs()}
    assert specs["loss"].widget == "dropdown" and set(specs["loss"].choices) == set(LOSSES)  # the registry
    assert specs["noise_level"].widget == "text" and specs["steps"].widget == "number" and specs["steps"].integer
    assert specs["shared_initial_noise"].widget == "checkbox" and specs["ema_decay"].widget == "text"
    # every preset survives the round trip through the widgets unchanged
    for preset in ("shapes-dppo", "shapes-cps-clip", "sd35m-dppo", None):
        values = submit.preset_values(list(specs.values()), preset)
        assert submit.overrides_from_form(list(specs.values()), preset, values) == {}


def test_submit_shows_validation_messages_next_to_their_fields(services: Services, team: TeamToken) -> None:
    specs = submit.form_specs()
    values = submit.preset_values(specs, "shapes-dppo")
    edit = {s.name: i for i, s in enumerate(specs)}
    values[edit["delta"]] = -1.0  # a field rule
    values[edit["num_minibatches"]] = 7  # a cross-field rule (must divide prompts_per_step*group_size)
    values[edit["sde_window"]] = "[0.0, oops"  # not JSON: goes through as text for pydantic to refuse
    with pytest.raises(submit.InvalidConfigError) as caught:
        submit.submit(services, team.token, specs, "shapes-dppo", values)
    per_field, general = submit.field_errors(caught.value, [s.name for s in specs])
    assert "delta" in per_field and "greater than 0" in per_field["delta"][0]
    assert "sde_window" in per_field
    with services.session() as session:
        assert run_service.list_runs(session, team_id=team.team_id).count == 0  # nothing stored or queued
    # the cross-field message names its fields
    values[edit["delta"]], values[edit["sde_window"]] = 1e-5, "[0.0, 0.5]"
    with pytest.raises(submit.InvalidConfigError) as caught:
        submit.submit(services, team.token, specs, "shapes-dppo", values)
    per_field, _ = submit.field_errors(caught.value, [s.name for s in specs])
    assert "num_minibatches" in per_field and "must divide" in per_field["num_minibatches"][0]


def test_submit_as_comparison_same_config_and_seeds_but_the_loss(services: Services, team: TeamToken) -> None:
    specs = submit.form_specs()
    values = submit.preset_values(specs, "shapes-dppo")
    values[[s.name for s in specs].index("steps")] = 12
    ids = submit.submit(
        services, team.token, specs, "shapes-dppo", values, name="pair", comparison=True, with_cps=True
    )
    with services.session() as session:
        configs = {
            r.variant: r.config for r in (run_service.get_run(session, team_id=team.team_id, run_id=i) for i in ids)
        }
    assert set(configs) == {"clip", "dppo", "cps-clip", "cps-dppo"}
    assert configs["clip"]["loss"] == "clip" and configs["dppo"]["loss"] == "dppo"
    assert configs["cps-dppo"]["sampler"] == "cps" and {c["steps"] for c in configs.values()} == {12}
    assert len({c["seed"] for c in configs.values()}) == 1
    differing = {k for k in configs["clip"] if configs["clip"][k] != configs["dppo"][k]}
    assert differing == {"loss"}
    labels = dict((v, k) for k, v in run_choices(services, team.token))
    assert set(ids) <= set(labels) and any(label.startswith(f"#{ids[0]} clip") for label in labels.values())
    assert comparison_choices(services, team.token)[0][0].endswith(")")


def test_compare_view_charts_summary_and_config_diff(services: Services, seeded: tuple) -> None:
    owner, _, (clip, dppo) = seeded
    view = compare.compare_view(services, owner.token, [clip, dppo], compare.DEFAULT_KEYS, 0.6, "step")
    smoothed = [t for t in view.chart.data if t.meta == "smoothed"]
    # reward, eval reward, KL old, KL ref, mask|clip, ratio range, grad norm, approx_kl: both runs each
    assert len(smoothed) == 2 * len(compare.DEFAULT_KEYS)
    colors = {
        t.legendgroup: {u.line.color for u in view.chart.data if u.legendgroup == t.legendgroup} for t in smoothed
    }
    assert all(len(c) == 1 for c in colors.values()) and len({next(iter(c)) for c in colors.values()}) == 2
    assert [t.name for t in view.reward_kl.data] == [f"#{clip} clip", f"#{dppo} dppo"]
    summary = view.summary.set_index("run")
    assert float(summary.loc[f"#{dppo} dppo", "final reward"]) > float(summary.loc[f"#{clip} clip", "final reward"])
    assert summary.loc[f"#{clip} clip", "mask/clip fraction"] and summary.loc[f"#{dppo} dppo", "time"] == "1:03"
    assert list(view.config_diff["field"]) == ["loss"] and not view.active
    assert "mask/fraction" not in compare.metric_options(services, owner.token, [clip, dppo])  # behind the pseudo
    assert "reward/shapes/mean" in compare.metric_options(services, owner.token, [clip, dppo])


def test_compare_wall_time_axis(services: Services, seeded: tuple) -> None:
    owner, _, (clip, dppo) = seeded
    view = compare.compare_view(services, owner.token, [clip], ["reward/total/mean"], 0.0, "wall time (s)")
    (line,) = [t for t in view.chart.data if t.meta == "smoothed"]
    assert list(line.x) == pytest.approx([s * 1.05 for s in range(1, 61)], abs=1e-3)  # when each step was logged


def test_compare_wall_time_axis_is_exact(services: Services, team: TeamToken) -> None:
    # Each bucket's logged wall time, not an interpolation: a pause (a requeue, a slow evaluation) shows where it
    # happened; a run that never started (imported points) counts from its first point.
    seconds = [2.0, 3.5, 500.0, 501.25]
    with services.session() as session:
        run = store_runs.create_run(session, team_id=team.team_id, config={"steps": 4})
        mark_running(session, run.id, step=3, total=4)
        start = store_runs.get_run(session, run_id=run.id).started_at
        rows = [(step, "paused", 1.0, start + timedelta(seconds=x)) for step, x in enumerate(seconds)]
        metrics.append_metrics(session, run_id=run.id, rows=rows)
        other = store_runs.create_run(session, team_id=team.team_id, config={"steps": 4}).id
        metrics.append_metrics(session, run_id=other, rows=[(s, "paused", 1.0, r[3]) for s, r in enumerate(rows)])
    for run_id, want in ((run.id, seconds), (other, [x - seconds[0] for x in seconds])):
        view = compare.compare_view(services, team.token, [run_id], ["paused"], 0.0, "wall time (s)")
        (line,) = [t for t in view.chart.data if t.meta == "smoothed"]
        assert list(line.x) == pytest.approx(want, abs=1e-3)
    by_step = compare.compare_view(services, team.token, [run.id], ["paused"], 0.0, "step")
    assert list(next(t for t in by_step.chart.data if t.meta == "smoothed").x) == [0, 1, 2, 3]


def test_sample_grid_rows_are_prompts_columns_runs_at_nearest_step(services: Services, seeded: tuple) -> None:
    owner, _, (clip, dppo) = seeded
    shown_runs, shown, rows = samples.sample_grid(services, owner.token, [clip, dppo], 33)
    assert [r.id for r in shown_runs] == [clip, dppo] and shown == {clip: 40, dppo: 40}  # logged every 20 steps
    assert len(rows) == 4 and all(set(cells) == {clip, dppo} for cells in rows.values())
    cell = rows[("a red circle", 0)][dppo]
    assert cell.src.startswith("data:image/png;base64,") and "shapes" in cell.rewards
    page = samples.grid_html(shown_runs, shown, rows)
    assert page.count("<img") == 8 and "step 40" in page and "shapes 0." in page
    assert samples.max_sample_step(services, owner.token, [clip, dppo]) == 60
    assert samples.nearest([0, 20, 40], 30) == 20 and samples.nearest([0, 20], None) == 20
    choices, cells = samples.prompt_history(services, owner.token, dppo, None)
    assert len(choices) == 4 and [c.step for c in cells] == [0, 20, 40, 60]
    assert samples.history_html(cells).count("<img") == 4


def test_blind_review_pairs_votes_and_win_rates(services: Services, seeded: tuple) -> None:
    owner, _, (clip, dppo) = seeded
    reviewer = f"r-{owner.team_id}"
    for _ in range(6):
        shown = review.next_pair(services, owner.token, clip, dppo)
        pair = shown["pair"]
        assert shown["left"].startswith("data:image/png") and shown["right"].startswith("data:image/png")
        assert str(clip) not in str(pair.keys()) and "run" not in " ".join(pair)  # nothing names the runs
        with services.session() as session:  # the reviewer prefers dppo, wherever it is shown
            run = run_service.get_owned_run(session, team_id=owner.team_id, run_id=dppo)
            dppo_ids = {s.id for s in sample_service.list_samples(session, run=run)}
        choice = "left" if pair["left_sample_id"] in dppo_ids else "right"
        assert review.vote(services, owner.token, pair, choice, reviewer) == f"Vote recorded: {choice}."
    table = review.win_table(services, owner.token, clip, dppo).set_index("run")
    assert table.loc[f"#{dppo} dppo", "win rate"] == "100%" and table.loc[f"#{dppo} dppo", "votes"] == 6
    assert table.loc[f"#{clip} clip", "win rate"] == "0%" and "–" in table.loc[f"#{clip} clip", "95% interval"]
    with pytest.raises(gr.Error, match="two different runs"):
        review.next_pair(services, owner.token, clip, clip)


def test_run_detail_checkpoint_download_and_evaluate(
    services: Services, seeded: tuple, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, _, (clip, _dppo) = seeded
    monkeypatch.setattr(detail, "ARCHIVE_DIR", tmp_path / "archives")
    shown = detail.run_detail(services, owner.token, clip)
    assert "succeeded" in shown["header"] and shown["config"]["loss"] == "clip"
    assert "finished 60 steps" in set(shown["events"]["message"])
    (checkpoint_id,) = shown["checkpoints"]["id"]
    archive = detail.download_checkpoint(services, owner.token, clip, str(checkpoint_id))
    assert archive.endswith(".tar")
    with tarfile.open(archive) as tar:
        assert any(n.endswith("state.json") for n in tar.getnames())
    stale = tmp_path / "archives" / "run0-step_000001.tar"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - detail.ARCHIVE_MAX_AGE_S - 1,) * 2)
    assert detail.download_checkpoint(services, owner.token, clip, str(checkpoint_id)) == archive
    assert list((tmp_path / "archives").iterdir()) == [Path(archive)]  # clicks reuse one file; old ones go
    assert build_dashboard(services).delete_cache == CACHE_CLEANUP  # Gradio's own copies are deleted too
    message = detail.evaluate(services, owner.token, clip, str(checkpoint_id))
    assert message.startswith("Evaluation run #")
    evals = detail.run_detail(services, owner.token, clip)["evaluations"]
    assert len(evals) == 1 and evals.iloc[0]["status"] == "queued"


def test_latest_group_preselects_the_newest_comparison(services: Services, seeded: tuple, team: TeamToken) -> None:
    owner, group, run_ids = seeded
    compare_group, compare_runs, samples_group, samples_runs = latest_group(services, owner.token)
    assert compare_runs == run_ids == samples_runs
    assert compare_group.value == group == samples_group.value
    assert latest_group(services, "") == (gr.skip(),) * 4  # logged out: nothing changes
    assert latest_group(services, team.token) == (gr.skip(),) * 4  # no comparison yet: the pickers stay empty


def test_review_and_detail_open_on_the_latest_comparison_and_run(services: Services) -> None:
    with services.session() as session:
        owner, loner = make_team_token(session), make_team_token(session)
        _group, (clip, dppo) = seed_comparison(session, team_id=owner.team_id, data_dir=services.settings.DATA_DIR)
        single = store_runs.create_run(session, team_id=loner.team_id, config={"steps": 10}).id
    assert review.latest_pair(services, owner.token) == (clip, dppo)  # the newest comparison's runs, in its order
    assert latest_run_id(services, owner.token) == max(clip, dppo)
    assert review.latest_pair(services, loner.token) is None and latest_run_id(services, loner.token) == single
    with services.session() as session:
        second = store_runs.create_run(session, team_id=loner.team_id, config={"steps": 10}).id
    assert review.latest_pair(services, loner.token) == (single, second)  # no comparison: the two newest runs
    assert review.latest_pair(services, "") is None and latest_run_id(services, "") is None
