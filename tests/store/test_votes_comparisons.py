"""Review votes (win rates with Wilson intervals) and comparisons (a base config as named variant runs)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store import comparisons, runs, samples, teams, votes
from store.models import ReviewVote
from store.runs import RunFilter
from store.samples import NewSample


def test_wilson_interval_known_values():
    low, high = votes.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert votes.wilson_interval(0, 5)[0] == 0.0 and votes.wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        votes.wilson_interval(0, 0)


def test_win_rates_per_pair(session):
    team = teams.create_team(session, name="v")
    other = teams.create_team(session, name="w")
    a, b = (runs.create_run(session, team_id=team.id, config={}) for _ in range(2))
    new = [NewSample(step=1, prompt="p", seed=i, index=i, image_path=f"{i}.png") for i in range(4)]
    sa = samples.add_samples(session, run_id=a.id, samples=new)
    sb = samples.add_samples(session, run_id=b.id, samples=new)
    # a wins 5 (both sides), loses 2, ties 1
    for i, (left, right, choice) in enumerate(
        [(sa, sb, "left")] * 3 + [(sb, sa, "right")] * 2 + [(sa, sb, "right")] * 2 + [(sb, sa, "tie")]
    ):
        votes.add_vote(
            session,
            team_id=team.id,
            reviewer="r",
            left_sample_id=left[i % 4].id,
            right_sample_id=right[i % 4].id,
            choice=choice,
        )
    votes.add_vote(
        session, team_id=other.id, reviewer="x", left_sample_id=sb[0].id, right_sample_id=sa[0].id, choice="left"
    )
    rates = {(w.run_id, w.opponent_id): w for w in votes.win_rates(session, team_id=team.id)}
    ab, ba = rates[(a.id, b.id)], rates[(b.id, a.id)]
    assert (ab.wins, ab.losses, ab.ties, ab.n) == (5, 2, 1, 8)
    assert (ba.wins, ba.losses, ba.ties) == (2, 5, 1)
    assert ab.win_rate == pytest.approx(5.5 / 8) and ab.win_rate + ba.win_rate == pytest.approx(1.0)
    assert ab.ci_low < ab.win_rate < ab.ci_high
    assert votes.win_rates(session, team_id=team.id, run_ids=[a.id]) == []
    assert session.scalar(select(func.count()).where(ReviewVote.team_id == team.id)) == 8
    with pytest.raises(ValueError):
        votes.add_vote(
            session, team_id=team.id, reviewer="r", left_sample_id=sa[0].id, right_sample_id=sb[0].id, choice="both"
        )


def test_comparison_creates_variant_runs_in_one_transaction(session):
    team = teams.create_team(session, name="c")
    base = {"steps": 5, "loss": "dppo"}
    comparison, made = comparisons.create_comparison(
        session,
        team_id=team.id,
        name="clip vs dppo",
        base_config=base,
        tags=["cmp"],
        variants=[
            comparisons.VariantRun("dppo", base),
            comparisons.VariantRun("clip", {**base, "loss": "clip"}, {"loss": "clip"}),
        ],
    )
    assert [(r.variant, r.comparison_id, r.status, r.tags) for r in made] == [
        ("dppo", comparison.id, "queued", ["cmp"]),
        ("clip", comparison.id, "queued", ["cmp"]),
    ]
    assert [r.id for r in comparisons.comparison_runs(session, comparison_id=comparison.id)] == [r.id for r in made]
    assert comparisons.get_comparison(session, comparison_id=comparison.id, team_id=team.id + 1) is None
    assert comparisons.get_comparison(session, comparison_id=comparison.id).variants[1]["overrides"] == {
        "loss": "clip"
    }
    assert [c.id for c in comparisons.list_comparisons(session, team_id=team.id)] == [comparison.id]
    assert len(runs.list_runs(session, team_id=team.id, filters=RunFilter(comparison_id=comparison.id))[0]) == 2
    with pytest.raises(ValueError, match="distinct"):
        comparisons.create_comparison(
            session, team_id=team.id, name="x", base_config=base, variants=[comparisons.VariantRun("a", base)] * 2
        )


def test_a_variant_run_names_its_overrides_after_the_preset_within_the_column():
    from store.comparisons import variant_preset

    assert variant_preset("shapes-dppo", {"loss": "clip"}) == "shapes-dppo + loss=clip"
    assert variant_preset("shapes-dppo", {}) == "shapes-dppo" and variant_preset(None, {"loss": "clip"}) is None
    long = variant_preset("shapes-dppo", {f"k{i}": "v" * 20 for i in range(10)})
    assert len(long) == 100 and long.endswith("…")
