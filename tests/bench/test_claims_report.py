"""bench/paper_claims.py's fixed rule and statistics on made-up runs (no training): the verdict per direction, the
paired interval, a run's summary, the cells of the study and the methods reported as not available."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import claims_report  # noqa: E402
import paper_claims  # noqa: E402

from api.services.seed_stats import Interval  # noqa: E402


def _run(rewards: dict[int, float], kl: dict[int, float] | None = None, **extra: dict[int, float]) -> dict:
    series = {"eval/reward/total/mean": rewards, "kl_ref/mean": kl or {s: s * 1e-4 for s in rewards if s}}
    series.update({f"eval/reward/{k}/mean": v for k, v in extra.items()})
    return {"series": series, "seconds": 1.0, "job": {"overrides": {}}}


@pytest.mark.parametrize(
    ("iv", "direction", "expected"),
    [
        (Interval(0.02, 0.01, 0.03, 5), "greater", "reproduced"),
        (Interval(-0.02, -0.03, -0.01, 5), "greater", "not reproduced"),
        (Interval(0.01, -0.01, 0.03, 5), "greater", "inconclusive"),
        (Interval(-0.02, -0.03, -0.01, 5), "less", "reproduced"),
        (Interval(-0.005, -0.009, 0.001, 3), "at_least", "reproduced"),  # within the 0.01 margin
        (Interval(-0.03, -0.04, -0.02, 3), "at_least", "not reproduced"),
        (Interval(-0.01, -0.02, 0.0, 3), "at_least", "inconclusive"),
        (Interval(0.05, None, None, 1), "greater", "inconclusive"),  # one seed decides nothing
    ],
)
def test_verdict_rule(iv, direction, expected):
    assert claims_report.verdict(iv, direction) == expected


def test_combine_and_paired():
    assert claims_report.combine(["reproduced", "reproduced"]) == "reproduced"
    assert claims_report.combine(["reproduced", "not reproduced", "inconclusive"]) == "not reproduced"
    assert claims_report.combine(["reproduced", "inconclusive"]) == "inconclusive"
    iv = claims_report.paired([0.7, 0.8, None], [0.6, 0.6, 0.5])  # the third seed is missing on one side
    assert iv.n == 2 and iv.mean == pytest.approx(0.15)


def test_summary_and_kl_to_reach():
    run = _run({0: 0.5, 10: 0.6, 20: 0.8, 30: 0.7, 40: 0.9}, shapes={0: 0.5, 40: 0.7})
    s = claims_report.summary(run)
    assert (s["base"], s["final"], s["best"], s["mid"]) == (0.5, 0.9, 0.9, 0.8)
    assert s["final_kl"] == pytest.approx(40e-4) and s["final:shapes"] == 0.7 and s["base:shapes"] == 0.5
    assert s["early_auc"] == pytest.approx(0.55)  # steps 0..10 of 40
    assert claims_report.kl_to_reach(run, 0.75) == pytest.approx(20e-4)
    assert claims_report.kl_to_reach(run, 0.95) is None


def test_claims_on_made_up_results():
    better = [_run({0: 0.5, 10: 0.6 + i / 100, 20: 0.7 + i / 100}) for i in range(3)]
    worse = [_run({0: 0.5, 10: 0.55, 20: 0.6 + i / 200}, kl={s: s * 3e-4 for s in (1, 10, 20)}) for i in range(3)]
    out = claims_report.claims({"c1-dppo-paper": better, "c1-clip-paper": worse})
    (c1,) = out["C1"]
    assert c1[3] == "reproduced" and c1[1].mean == pytest.approx(0.1 + 0.01 - 0.005)
    (c3,) = out["C3"]
    assert c3[3] == "reproduced"  # clip needs 3x the KL to reach the same reward


def test_study_cells_and_missing_methods(monkeypatch):
    quick = paper_claims.study_cells(quick=True)
    assert set(quick) == {"C1", "C2", "C3", "C4", "C5", "C6"}
    full = paper_claims.study_cells(quick=False)
    c1 = {c.key: c for c in full["C1"]}
    assert c1["c1-dppo-paper"].seeds == 5 and c1["c1-dppo-paper"].steps == 100
    assert all(c.steps >= 300 for c in full["C2"])
    monkeypatch.setitem(paper_claims.METHODS, "imaginary", {"loss": "no-such-loss"})
    assert paper_claims.available("imaginary").startswith("not available")
    assert paper_claims.available("dppo") is None


def test_partial_report_names_the_missing_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(claims_report, "save_pngs", lambda figures, folder: [])  # no Chromium needed here
    runs = {"c1-dppo-paper": [_run({0: 0.5, 10: 0.7})] * 2, "c1-clip-paper": [_run({0: 0.5, 10: 0.6})] * 2}
    calibration = {"steps": 4, "D_p50": 1.0, "D_p90": 2.0, "abs_r_minus_1_p50": 0.1, "abs_r_minus_1_p90": 0.2}
    calibration.update(delta=1.0, clip_range=0.1, seconds=1.0)
    cells = paper_claims.study_cells(quick=False)
    doc = tmp_path / "results.md"
    claims_report.write_report(
        doc,
        cells=cells,
        results=runs,
        pending=["c1-dppo-paper seed 2", "c6-dppo_first_order seed 0"],
        calibration=calibration,
        missing={},
        quick=False,
        command="python bench/paper_claims.py --report-only",
        minutes=0.1,
        study_size="56 runs",
        cell_info={c.key: {"method": c.method} for cs in cells.values() for c in cs},
        protocol="the protocol",
        cache=Path("docs/results/study"),
    )
    text = doc.read_text()
    assert "PARTIAL STUDY: 2 of the protocol's runs are not done yet**" in text
    assert "c1-dppo-paper seed 2, c6-dppo_first_order seed 0" in text
    assert "Regenerate the study: `python bench/paper_claims.py` (56 runs" in text  # without --report-only
    assert "cached under docs/results/study" in text
    assert "| C6 | **inconclusive** | no runs" in text
