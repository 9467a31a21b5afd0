"""docs/results.md for bench/paper_claims.py: per-run summaries, the claims' paired statistics and verdicts (the rule
of paper_claims' docstring), tables and PNG figures (ui/plots.py's band and frontier figures, rendered by Chromium).

Statistics are the dashboard's (api/services/seed_stats.py): 95% Student-t intervals over seeds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api.services import seed_stats
from ui import plots

REWARD = "eval/reward/total/mean"
KL = "kl_ref/mean"
MARGIN = 0.01  # paper_claims.EQUIVALENCE_MARGIN (repeated: this module must not import the script)
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
Iv = seed_stats.Interval


# --- per run ---


def summary(run: dict[str, Any]) -> dict[str, float | None]:
    """One run's numbers: base (step 0), final, best, AUC, early AUC (first quarter), mid-horizon reward, final KL."""
    reward = {s: v for s, v in run["series"].get(REWARD, {}).items() if v is not None and math.isfinite(v)}
    kl = run["series"].get(KL, {})
    steps = sorted(reward)
    if not steps:
        return {}
    span = steps[-1]
    early = {s: v for s, v in reward.items() if s <= max(span // 4, steps[min(1, len(steps) - 1)])}
    mid = min(steps, key=lambda s: abs(s - span / 2))
    out = {
        "base": reward[steps[0]],
        "final": reward[steps[-1]],
        "best": max(reward.values()),
        "auc": seed_stats.area_under_curve(reward),
        "early_auc": seed_stats.area_under_curve(early),
        "mid": reward[mid],
        "final_kl": kl[max(kl)] if kl else None,
    }
    for key, pts in run["series"].items():  # per-reward held-out components (C5)
        if key.startswith("eval/reward/") and key != REWARD and pts:
            name = key.split("/")[2]
            out[f"final:{name}"], out[f"base:{name}"] = pts[max(pts)], pts[min(pts)]
    return out


def values(runs: Sequence[dict[str, Any]], name: str) -> list[float | None]:
    return [summary(r).get(name) for r in runs]


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> Iv:
    """The t-interval of a_i - b_i over the seeds both have."""
    return seed_stats.t_interval([x - y for x, y in zip(a, b, strict=False) if x is not None and y is not None])


def verdict(iv: Iv, direction: str) -> str:
    """The protocol's rule: 'greater' / 'less' than 0, or 'at_least' (above -MARGIN)."""
    if iv.n < 2 or iv.lo is None or iv.hi is None:
        return "inconclusive"
    lo, hi = (iv.lo, iv.hi) if direction != "less" else (-iv.hi, -iv.lo)
    bar = -MARGIN if direction == "at_least" else 0.0
    return "reproduced" if lo > bar else "not reproduced" if hi < bar else "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "not reproduced" if "not reproduced" in verdicts else "inconclusive"


# --- the claims ---


def kl_to_reach(run: dict[str, Any], target: float) -> float | None:
    """KL to the base at the first eval step whose held-out reward reaches `target` (None if never)."""
    reward = run["series"].get(REWARD, {})
    kl_at = seed_stats.align_at_or_before(run["series"].get(KL, {}), list(reward))
    hit = next((s for s in sorted(reward) if reward[s] is not None and reward[s] >= target), None)
    return None if hit is None else kl_at.get(hit)


Sub = tuple[str, Iv, str, str]  # (statement, interval of the statistic, rule, verdict)
RULES = {"greater": "> 0", "less": "< 0", "at_least": f">= -{MARGIN}"}


def _add(out: list[Sub], text: str, iv: Iv, rule: str, direction: str) -> None:
    out.append((text, iv, f"{rule}: {RULES[direction]}", verdict(iv, direction)))


def _diff(out: list[Sub], r: Any, text: str, a: str, b: str, stat: str, direction: str) -> None:
    """The paired difference of `stat` between cells a and b (skipped when either has no runs)."""
    if r(a) and r(b):
        _add(out, text, paired(values(r(a), stat), values(r(b), stat)), f"{a} - {b}, {stat}", direction)


def claims(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[Sub]]:
    """Claim -> its sub-claims. Cells without runs (methods not available) contribute none."""
    r = results.get
    out: dict[str, list[Sub]] = {k: [] for k in ("C1", "C2", "C3", "C4", "C5", "C6")}
    for t in ("paper", "calibrated"):
        text = f"dppo > clip, final held-out reward ({t} thresholds)"
        _diff(out["C1"], r, text, f"c1-dppo-{t}", f"c1-clip-{t}", "final", "greater")
    for m in ("grpo_guard", "nft"):
        _diff(out["C1"], r, f"dppo > {m}, final held-out reward", "c1-dppo-paper", f"c1-{m}", "final", "greater")
    _multi_epoch(out["C2"], r)
    _kl_efficiency(out["C3"], r)
    _ablations(out["C4"], r)
    _multi_reward(out, r)
    text = "first-order mask (App. E) at least as good as Eq. 18 (calibrated delta)"
    _diff(out["C6"], r, text, "c6-dppo_first_order", "c1-dppo-calibrated", "final", "at_least")
    return out


def _multi_epoch(out: list[Sub], r: Any) -> None:
    """C2: under I = 2 dppo ends higher than clip, and gains more over the second half (clip plateaus)."""
    for g in ("G8-I2", "G4-I2"):
        _diff(
            out, r, f"dppo > clip under {g}, final held-out reward", f"c2-dppo-{g}", f"c2-clip-{g}", "final", "greater"
        )
    if r("c2-dppo-G8-I2") and r("c2-clip-G8-I2"):
        gain = {}
        for m in ("dppo", "clip"):
            runs = r(f"c2-{m}-G8-I2")
            pairs = zip(values(runs, "final"), values(runs, "mid"), strict=True)
            gain[m] = [f - h if f is not None and h is not None else None for f, h in pairs]
        text = "dppo keeps improving where clip plateaus (G8-I2): late gain dppo > clip"
        _add(out, text, paired(gain["dppo"], gain["clip"]), "(final - mid-horizon) dppo - clip", "greater")


def _kl_efficiency(out: list[Sub], r: Any) -> None:
    """C3: the KL to the base at which each run first reaches a reward both methods reach (paper thresholds).

    The target is halfway from the base reward to the weaker method's mean final reward."""
    dppo, clip = r("c1-dppo-paper"), r("c1-clip-paper")
    if not (dppo and clip):
        return
    base = seed_stats.t_interval(values(dppo + clip, "base")).mean or 0.0
    weaker = min(seed_stats.t_interval(values(x, "final")).mean or base for x in (dppo, clip))
    target = base + 0.5 * (weaker - base)
    iv = paired([kl_to_reach(x, target) for x in clip], [kl_to_reach(x, target) for x in dppo])
    text = f"KL to reach held-out reward {target:.4f}: dppo lower than clip"
    _add(out, text, iv, "clip - dppo, kl_ref at the first eval reaching it", "greater")


def _ablations(out: list[Sub], r: Any) -> None:
    """C4: the symmetric mask ends below the base; delta 1e-7 is slower early and ends at least as well."""
    if r("c4-dppo_symmetric"):
        runs = r("c4-dppo_symmetric")
        text = "without the asymmetry training collapses (symmetric mask ends below the base)"
        _add(out, text, paired(values(runs, "final"), values(runs, "base")), "symmetric final - base", "less")
    text = "delta 1e-7 learns more slowly at first (early AUC, first quarter)"
    _diff(out, r, text, "c1-dppo-paper", "c4-dppo-delta1e-07", "early_auc", "greater")
    text = "delta 1e-7 ends at least as well as 1e-5"
    _diff(out, r, text, "c4-dppo-delta1e-07", "c1-dppo-paper", "final", "at_least")


def _multi_reward(out: dict[str, list], r: Any) -> None:
    """C5: dppo keeps both rewards rising (each final - base > 0) where clip trades one (some final - base < 0)."""
    for method in ("dppo", "clip"):
        runs = r(f"c5-{method}")
        if not runs:
            continue
        names = sorted({k.split(":", 1)[1] for k in summary(runs[0]) if k.startswith("final:")})
        ivs = {n: paired(values(runs, f"final:{n}"), values(runs, f"base:{n}")) for n in names}
        if method == "dppo":
            for n, iv in ivs.items():
                out["C5"].append((f"dppo: {n} rises", iv, f"dppo {n} final - base: > 0", verdict(iv, "greater")))
        elif ivs:
            n, iv = min(ivs.items(), key=lambda kv: kv[1].mean if kv[1].mean is not None else math.inf)
            v = verdict(iv, "less")  # clip trades: its weaker reward falls; both rising contradicts the claim
            if v == "inconclusive" and all(verdict(x, "greater") == "reproduced" for x in ivs.values()):
                v = "not reproduced"
            out["C5"].append(
                (f"clip trades one reward for the other ({n} falls)", iv, f"clip {n} final - base: < 0", v)
            )


# --- figures ---


def band_fig(results: dict[str, list[dict[str, Any]]], cells: Sequence[str], key: str = REWARD, axis: str = "step"):
    bands = []
    colors = plots.variant_colors(list(cells))
    for cell in cells:
        runs = results.get(cell, [])
        if not runs:
            continue
        band = seed_stats.seed_band([r["series"].get(key, {}) for r in runs])
        o = runs[0]["job"]["overrides"]
        per = int(o.get("group_size", 8)) * int(o.get("prompts_per_step", 16)) if axis == "rollouts" else 1
        x = [s * per for s in band.steps]
        bands.append(plots.Band(f"{cell} (n={len(runs)})", colors[cell], x, band.mean, band.lo, band.hi, band.n))
    return plots.band_figure({key: bands}, x_title="rollouts (images)" if axis == "rollouts" else "step", columns=1)


def frontier_fig(results: dict[str, list[dict[str, Any]]], cells: Sequence[str]):
    colors = plots.variant_colors(list(cells))
    out = []
    for cell in cells:
        runs = results.get(cell, [])
        if not runs:
            continue
        reward = seed_stats.seed_band([r["series"].get(REWARD, {}) for r in runs])
        kl_at = [seed_stats.align_at_or_before(r["series"].get(KL, {}), reward.steps) for r in runs]
        kl = dict(zip(seed_stats.seed_band(kl_at).steps, seed_stats.seed_band(kl_at).mean, strict=True))
        xs = [kl.get(s) for s in reward.steps]
        ex, ey = seed_stats.pareto_envelope(xs, reward.mean)
        out.append(plots.Frontier(f"{cell} (n={len(runs)})", colors[cell], xs, reward.mean, reward.steps, ex, ey))
    return plots.frontier_figure(out)


def save_pngs(figures: dict[str, Any], folder: Path) -> list[str]:
    """Each figure as folder/NAME.png through headless Chromium (Debian's); returns the names written."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return []
    if not Path(CHROMIUM).exists():
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        for name, fig in figures.items():
            fig.update_layout(width=960)
            page.set_content(fig.to_html(include_plotlyjs=True, full_html=True))
            page.wait_for_selector(".js-plotly-plot .main-svg")
            page.wait_for_timeout(300)
            page.locator(".js-plotly-plot").first.screenshot(path=str(folder / f"{name}.png"))
            written.append(name)
        browser.close()
    return written


# --- the document ---

CLAIMS = {
    "C1": "Table 1, single reward: dppo's final held-out reward vs clip, GRPO-Guard and NFT at equal rollouts.",
    "C2": "Fig. 5, multi-epoch (G8-I1, G8-I2, G4-I2 here for the paper's G64-I1, G64-I2, G32-I2; the I1 reference is "
    "C1's calibrated runs, 100 steps): ratio clipping plateaus or degrades under I2 while dppo keeps improving.",
    "C3": "Table 2, KL efficiency: at equal held-out reward, dppo's KL to the base is lower.",
    "C4": "Fig. 3: without the asymmetry (dppo_mask=symmetric) training collapses; a smaller delta learns more slowly "
    "at first and ends at least as well.",
    "C5": "Multi-objective (GDPO; shapes + jpeg_compressibility): dppo keeps both rising where clip trades one for "
    "the other.",
    "C6": "New, untested in the paper: the first-order mask of Appendix E vs Eq. 18.",
}
# Cells a claim shows beyond its own: C3 reads C1's paper runs, C2 shows C1's calibrated I1 runs as the reference.
CLAIM_CELLS = {
    "C3": ("c1-dppo-paper", "c1-clip-paper"),
    "C6": ("c1-dppo-calibrated", "c6-dppo_first_order"),
    "C2": (
        "c1-dppo-calibrated",
        "c1-clip-calibrated",
        "c2-dppo-G8-I2",
        "c2-clip-G8-I2",
        "c2-dppo-G4-I2",
        "c2-clip-G4-I2",
    ),
}


def fmt(iv: Iv, digits: int = 4) -> str:
    if iv.mean is None:
        return "—"
    if iv.lo is None:
        return f"{iv.mean:.{digits}g} (n={iv.n})"
    return f"{iv.mean:.{digits}g} [{iv.lo:.{digits}g}, {iv.hi:.{digits}g}] (n={iv.n})"


def cell_table(results: dict[str, list[dict[str, Any]]], cells: Sequence[str], info: dict[str, Any]) -> list[str]:
    lines = [
        "| cell | method | thresholds | steps | base | final held-out | best held-out | AUC | final KL | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        runs = results.get(cell, [])
        if not runs:
            continue
        c = info.get(cell, {})
        iv = {k: seed_stats.t_interval(values(runs, k)) for k in ("base", "final", "best", "auc", "final_kl")}
        seconds = sum(r["seconds"] for r in runs) / len(runs)
        lines.append(
            f"| {cell} | {c.get('method', '')} | {c.get('thresholds', '')} | {c.get('steps', '')} | "
            + " | ".join(fmt(iv[k], 3 if k == "final_kl" else 4) for k in ("base", "final", "best", "auc", "final_kl"))
            + f" | {seconds:.0f} |"
        )
    return lines


def _figures(cells: dict[str, list[Any]], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """name -> figure: each claim's held-out curves with bands, the frontiers of C1 and C3, C2 on rollouts too."""
    figures: dict[str, Any] = {}
    for claim, cs in cells.items():
        keys = list(CLAIM_CELLS.get(claim, [c.key for c in cs]))
        if claim == "C5":
            for name in ("shapes", "jpeg_compressibility"):
                figures[f"{claim.lower()}-{name}"] = band_fig(results, keys, key=f"eval/reward/{name}/mean")
        elif keys:
            figures[f"{claim.lower()}-curves"] = band_fig(results, keys)
        if claim in ("C1", "C3") and keys:
            figures[f"{claim.lower()}-frontier"] = frontier_fig(results, keys)
        if claim == "C2" and keys:
            figures["c2-rollouts"] = band_fig(results, keys, axis="rollouts")
    return figures


def write_report(
    doc: Path,
    *,
    cells: dict[str, list[Any]],
    results: dict[str, list[dict[str, Any]]],
    pending: Sequence[str],
    calibration: dict[str, float],
    missing: dict[str, str],
    quick: bool,
    command: str,
    minutes: float,
    study_size: str,
    cell_info: dict[str, Any],
    protocol: str,
    cache: Path,
) -> None:
    """docs/results.md and its figures (docs/results/*.png). `pending`: the study's runs not cached yet; `cache`: where
    the study caches its runs."""
    verdicts = claims(results)
    written = set(save_pngs(_figures(cells, results), doc.parent / "results"))
    lines = _head(
        results, calibration, quick=quick, command=command, minutes=minutes, study_size=study_size, cache=cache
    )
    if pending:
        lines += [
            f"> **PARTIAL STUDY: {len(pending)} of the protocol's runs are not done yet**, so cells with fewer seeds",
            "> than the protocol sets, and claims without runs, decide less than they should. The study resumes",
            "> from its cache. Missing: " + ", ".join(pending) + ".",
            "",
        ]
    lines += ["## Verdicts", "", "| claim | verdict | sub-claims |", "|---|---|---|"]
    for claim, subs in verdicts.items():
        listed = "; ".join(f"{text}: {v}" for text, _, _, v in subs) or "no runs (methods not available)"
        lines.append(f"| {claim} | **{combine([v for *_, v in subs])}** | {listed} |")
    lines += ["", "## Protocol (fixed in bench/paper_claims.py before any run)", "", "```", protocol.strip(), "```"]
    lines += ["", *_calibration_lines(calibration), ""]
    if missing:
        lines += ["### Methods not available", ""] + [f"- {m}: {why}" for m, why in missing.items()] + [""]
    for claim, subs in verdicts.items():
        keys = list(CLAIM_CELLS.get(claim, [c.key for c in cells.get(claim, [])]))
        lines += [f"## {claim}", "", CLAIMS[claim], "", *cell_table(results, keys, cell_info), ""]
        if subs:
            lines += ["| sub-claim | statistic (mean [95% t-interval]) | rule | verdict |", "|---|---|---|---|"]
            lines += [f"| {text} | {fmt(iv)} | {rule} | {v} |" for text, iv, rule, v in subs]
            lines += ["", f"**Verdict: {combine([v for *_, v in subs])}.**", ""]
        lines += [f"![{claim} {n}](results/{n}.png)\n" for n in sorted(written) if n.startswith(claim.lower())]
    doc.write_text("\n".join(lines) + "\n")


def _head(
    results: dict[str, list[dict[str, Any]]],
    calibration: dict[str, float],
    *,
    quick: bool,
    command: str,
    minutes: float,
    study_size: str,
    cache: Path,
) -> list[str]:
    """Title, the quick-pass banner, the commands, the study's size and this file's cost."""
    full = command.replace(" --quick", "").replace(" --report-only", "")
    smoke = full + " --quick"
    n_runs = sum(len(v) for v in results.values()) + 1  # + the calibration run
    run_minutes = (sum(r["seconds"] for v in results.values() for r in v) + calibration.get("seconds", 0)) / 60
    lines = ["# The paper's claims on the built-in shapes domain", ""]
    if quick:
        lines += [
            "> **QUICK SMOKE PASS — not the study; verdicts are not evidence.** 4-6 steps, 2 seeds per cell, 4",
            "> prompts per step and an 8-image, 10-step evaluation, run to check that the script, the statistics and",
            "> the figures work end to end. The study is the first command below.",
            "",
        ]
    lines += [
        f"Regenerate the study: `{full}` ({study_size}; at most 2 training processes at a time; about two hours on",
        "2 idle cores at about 1.8 s per step per single-thread process with P = 8, G = 8, 2.3 s with I = 2; runs are",
        f"cached under {cache}, so an interrupted study resumes). The smoke pass: `{smoke}`.",
        "",
        f"This file: `{command}`, {n_runs} runs, {run_minutes:.0f} min of process time (2 at a time)"
        + (f"; written in {minutes:.1f} min from cached runs." if minutes < 0.5 * run_minutes else "."),
        "",
    ]
    return lines


def _calibration_lines(calibration: dict[str, float]) -> list[str]:
    return [
        "### How delta and clip_range were chosen",
        "",
        "- paper: delta = 1e-5, clip_range = 1e-4 (mean reduction), the values set for SD3.5's 65,536-dim latents;",
        "  the built-in model's latent has 3,072 dims, so the same threshold means something else here.",
        f"- calibrated (a {calibration.get('steps')}-step run of loss `none`, seed 100): D p50 = "
        f"{calibration['D_p50']:.3g}, D p90 = {calibration['D_p90']:.3g}; |r - 1| p50 = "
        f"{calibration['abs_r_minus_1_p50']:.3g}, p90 = {calibration['abs_r_minus_1_p90']:.3g} (medians over steps). "
        f"delta = {calibration['delta']:.3g}, clip_range = {calibration['clip_range']:.3g}: each is exceeded by about "
        "half of the unconstrained policy's terms.",
    ]
