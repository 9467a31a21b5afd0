"""Samples (upsert with stable ids, steps, nearest step, same-prompt pairs) and checkpoint rows."""

from __future__ import annotations

import pytest

from store import checkpoints, runs, samples, teams
from store.samples import NewSample


@pytest.fixture
def two_runs(session):
    team = teams.create_team(session, name="s")
    return [runs.create_run(session, team_id=team.id, config={}) for _ in range(2)]


def _new(step, index, seed=0, prompt="a red circle", reward=0.5):
    return NewSample(
        step=step,
        prompt=prompt,
        seed=seed,
        index=index,
        image_path=f"x/{step}/{index}.png",
        thumb_path=f"x/{step}/{index}.thumb.png",
        rewards={"total": reward},
    )


def test_add_samples_is_idempotent_and_keeps_ids(session, two_runs):
    run = two_runs[0]
    first = samples.add_samples(session, run_id=run.id, samples=[_new(10, 0), _new(10, 1, seed=1)])
    again = samples.add_samples(session, run_id=run.id, samples=[_new(10, 0, reward=0.9)])
    assert [s.id for s in again] == [first[0].id] and again[0].rewards == {"total": 0.9}
    assert len(samples.list_samples(session, run_id=run.id)) == 2
    assert samples.get_sample(session, sample_id=first[1].id).seed == 1
    assert samples.add_samples(session, run_id=run.id, samples=[]) == []


def test_steps_and_nearest_step(session, two_runs):
    run = two_runs[0]
    assert samples.nearest_sample_step(session, run_id=run.id, step=5) is None
    samples.add_samples(session, run_id=run.id, samples=[_new(s, 0) for s in (10, 20, 40)])
    assert samples.sample_steps(session, run_id=run.id) == [10, 20, 40]
    assert [s.step for s in samples.list_samples(session, run_id=run.id, step=20)] == [20]
    cases = {0: 10, 10: 10, 14: 10, 15: 10, 16: 20, 31: 40, 99: 40}
    assert {q: samples.nearest_sample_step(session, run_id=run.id, step=q) for q in cases} == cases


def test_matched_pairs_share_prompt_and_seed(session, two_runs):
    a, b = two_runs
    samples.add_samples(session, run_id=a.id, samples=[_new(10, 0, seed=1), _new(10, 1, seed=2, prompt="blue")])
    samples.add_samples(session, run_id=b.id, samples=[_new(20, 0, seed=1), _new(20, 1, seed=3, prompt="blue")])
    pairs = samples.matched_pairs(session, left_run_id=a.id, right_run_id=b.id, left_step=10, right_step=20)
    assert [(x.seed, y.seed, x.prompt) for x, y in pairs] == [(1, 1, "a red circle")]


def test_checkpoints(session, two_runs):
    a, b = two_runs
    assert checkpoints.latest_checkpoint(session, run_id=a.id) is None
    c1 = checkpoints.add_checkpoint(session, run_id=a.id, step=10, path="runs/1/checkpoints/step_000010")
    c2 = checkpoints.add_checkpoint(session, run_id=a.id, step=20, path="runs/1/checkpoints/step_000020")
    again = checkpoints.add_checkpoint(session, run_id=a.id, step=10, path="runs/1/checkpoints/step_000010")
    assert again.id == c1.id
    assert [c.step for c in checkpoints.list_checkpoints(session, run_id=a.id)] == [10, 20]
    assert checkpoints.latest_checkpoint(session, run_id=a.id).id == c2.id
    assert checkpoints.get_checkpoint(session, checkpoint_id=c1.id, run_id=a.id).step == 10
    assert checkpoints.get_checkpoint(session, checkpoint_id=c1.id, run_id=b.id) is None
