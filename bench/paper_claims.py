"""The paper's claims on the built-in shapes domain (issue 13): runs C1-C6 through the trainer, writes docs/results.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/paper_claims.py            # the study (~2 h on 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python bench/paper_claims.py --quick    # smoke pass: tiny steps and seeds

Protocol, fixed here before any run (the doc repeats it; whatever the numbers say is the result):

- Domain and budget. The built-in shapes domain, preset shapes-dppo as the base (lr 1e-4, full fine-tuning, shared
  initial noise, flow_sde sampler) with P = 8 prompts x G = 8 samples per step (the preset has P = 16); every method
  of a claim runs with the same P, G and steps, so with equal rollouts (images sampled): 100 steps, 300 for C2.
  Held-out reward = `eval/reward/total/mean`: the ODE sampler (40 steps) on the held-out prompts, 36 images, every
  10 steps and at step 0 (the base model).
- Size. Resized once, before any full-study run: the first version (P = 16, 150 steps) was measured at 2.7-2.8 s per
  step per single-thread process with two running (2 idle cores), 4.7 h for the study; P = 8 measured 1.9 s (I = 1)
  and 2.4 s (I = 2) per step with an evaluation every 5 steps, so 100 steps (300 for C2) fit about two hours.
- Seeds. The same seeds for every method of a cell (0, 1, ...): 5 where the expected difference is small (dppo vs
  clip, C1 and C3), 3 elsewhere. Differences are paired by seed.
- Thresholds. "paper": delta = 1e-5 and clip_range = 1e-4 with mean reduction (spec §4), values chosen for SD3.5's
  65,536-dim latents; the built-in model has 3 x 32 x 32 = 3,072. "calibrated": a calibration run (loss `none`, the
  unconstrained policy gradient, seed 100, CALIBRATION_STEPS steps) measures the distribution of D (the logged
  `kl_old/p50`, `kl_old/p90`) and of |r - 1| (from the loss inputs of every minibatch after the first of each
  rollout); then delta = median of the per-step D medians and clip_range = median of the per-step |r - 1| medians,
  so each threshold is exceeded by about half of the unconstrained terms: both constraints bind on a comparable
  share. GRPO-Guard (its own normalised ratio) and NFT (no ratio) keep their defaults.
- Methods. dppo (Eq. 18 mask), clip (Flow-GRPO), grpo_guard, nft and the dppo masks symmetric / first_order, each
  where the trainer registers it (trainer/loss_registry.py LOSSES, TrainConfig.dppo_mask); a missing one is reported as
  "not available", never a failure.
- Statistics (api/services/seed_stats.py, the dashboard's): per run final held-out reward (last eval), best, area
  under the held-out curve (trapezoid / span), final kl_ref/mean; a claim's statistic is a paired difference over
  seeds with its 95% Student-t interval (n - 1 dof).
- Verdict rule, per sub-claim: "reproduced" when the interval lies on the claimed side of 0 (or, for "at least as
  well", above -EQUIVALENCE_MARGIN), "not reproduced" when it lies wholly on the other side (or below
  -EQUIVALENCE_MARGIN), else "inconclusive"; a claim with several sub-claims is reproduced when all are, not
  reproduced when any is not, else inconclusive. With fewer than 2 paired seeds: inconclusive.
- Parallelism: at most 2 training processes at a time, OMP_NUM_THREADS=1 each. Each finished run is cached under
  --out as JSON (the full study's in docs/results/runs, committed), so an interrupted study resumes; --report-only
  writes the doc from the runs cached so far and lists the runs still missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/paper_claims.py` from the repo root

EQUIVALENCE_MARGIN = 0.01  # held-out reward: "at least as well" tolerates this much less
CALIBRATION_STEPS = 40
EVAL_EVERY = 10
KEEP = ("eval/reward/", "kl_ref/mean", "kl_old/p50", "kl_old/p90", "mask/fraction", "clip/fraction", "reward/total")
# method -> overrides on the base preset, and what it needs from the trainer to exist
METHODS: dict[str, dict[str, Any]] = {
    "dppo": {"loss": "dppo"},
    "clip": {"loss": "clip"},
    "grpo_guard": {"loss": "grpo_guard"},
    "nft": {"loss": "nft", "shared_initial_noise": False, "beta": 1e-4},  # spec §11 (ODE rollouts: spread from noise)
    "dppo_symmetric": {"loss": "dppo", "dppo_mask": "symmetric"},
    "dppo_first_order": {"loss": "dppo", "dppo_mask": "first_order"},
}
# --quick only: a smaller batch and a cheaper evaluation, so the smoke pass fits a few minutes of a shared machine
QUICK_OVERRIDES = {"prompts_per_step": 4, "eval_num_samples": 8, "eval_num_steps": 10}
STUDY_OVERRIDES = {"prompts_per_step": 8}  # the Size paragraph of the protocol
# The full study's runs are data behind docs/results.md, committed beside it; the smoke pass's are not.
STUDY_CACHE = Path(__file__).resolve().parent.parent / "docs" / "results" / "study"
QUICK_CACHE = Path("/tmp/paper_claims-quick")
MULTI_REWARD = {"rewards": [{"name": "shapes"}, {"name": "jpeg_compressibility"}], "reward_aggregation": "gdpo"}


@dataclass(frozen=True)
class Cell:
    """One setting of one method: the runs of its seeds differ by seed only."""

    key: str  # unique, also the cache file prefix
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    seeds: int = 3
    thresholds: str = "paper"  # or "calibrated"


def available(method: str) -> str | None:
    """None when the trainer has the method, else why not (a missing loss or config field)."""
    from pydantic import ValidationError

    from trainer.presets import get_preset

    try:
        get_preset("shapes-dppo").with_overrides(METHODS[method])
    except (ValidationError, ValueError, KeyError) as err:
        return f"not available in this trainer ({str(err).splitlines()[0][:120]})"
    return None


def study_cells(quick: bool) -> dict[str, list[Cell]]:
    """The claims' cells. Full: 100 steps (300 for C2), 5 seeds for dppo vs clip, 3 elsewhere. Quick: 4 steps, 2.

    C2's I1 reference is C1's calibrated dppo and clip (G8-I1, 100 steps); C3 reads C1's paper-threshold runs; C6
    compares with C1's calibrated dppo (the same config and seeds).
    """
    s, long, few, many = (4, 6, 2, 2) if quick else (100, 300, 3, 5)
    both = ("paper", "calibrated")
    c1 = [Cell(f"c1-{m}-{t}", m, steps=s, seeds=many, thresholds=t) for t in both for m in ("dppo", "clip")]
    c1 += [Cell(f"c1-{m}", m, steps=s, seeds=few) for m in ("grpo_guard", "nft")]
    c2 = [
        Cell(f"c2-{m}-{name}", m, overrides=o, steps=long, seeds=few, thresholds="calibrated")
        for name, o in (("G8-I2", {"inner_epochs": 2}), ("G4-I2", {"group_size": 4, "inner_epochs": 2}))
        for m in ("dppo", "clip")
    ]
    c4 = [Cell("c4-dppo_symmetric", "dppo_symmetric", steps=s, seeds=few)]
    c4 += [Cell(f"c4-dppo-delta{d:g}", "dppo", overrides={"delta": d}, steps=s, seeds=few) for d in (1e-6, 1e-7)]
    c5 = [
        Cell(f"c5-{m}", m, overrides=MULTI_REWARD, steps=s, seeds=few, thresholds="calibrated")
        for m in ("dppo", "clip")
    ]
    c6 = [Cell("c6-dppo_first_order", "dppo_first_order", steps=s, seeds=few, thresholds="calibrated")]
    return {"C1": c1, "C2": c2, "C3": [], "C4": c4, "C5": c5, "C6": c6}  # C3 reads C1's runs


# --- one training run (in a worker process) ---


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (cell, seed) and return its series: key -> {step: value}, plus |r - 1| quantiles when asked."""
    import tempfile

    import torch

    import trainer.train as train_module
    from trainer.callbacks import NullCallback
    from trainer.presets import get_preset

    torch.set_num_threads(1)
    overrides = {**job["overrides"], "seed": job["seed"], "steps": job["steps"], "eval_every": job["eval_every"]}
    overrides.update(sample_every=0, checkpoint_every=0, num_logged_samples=0)
    config = get_preset("shapes-dppo").with_overrides(overrides)
    series: dict[str, dict[int, float]] = {}
    ratio_dev: list[tuple[float, float]] = []

    class Collect(NullCallback):
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            for k, v in metrics.items():
                if k.startswith(KEEP):
                    series.setdefault(k, {})[step] = float(v)

    if job.get("measure_ratio"):  # |r - 1| of every minibatch but the first of a rollout (where r = 1)
        original, calls = train_module.compute_loss, [0]

        def measured(name: str, inputs: Any, cfg: Any) -> Any:
            calls[0] += 1
            if calls[0] % cfg.num_minibatches != 1 or cfg.num_minibatches == 1:
                dev = (inputs.logp_new.detach() - inputs.logp_old).exp().sub(1).abs().flatten().double()
                ratio_dev.append((dev.quantile(0.5).item(), dev.quantile(0.9).item()))
            return original(name, inputs, cfg)

        train_module.compute_loss = measured
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train_module.train(config, Collect(), out_dir=Path(out))
    return {"series": series, "ratio_dev": ratio_dev, "seconds": time.perf_counter() - start}


# --- the study ---


def calibrate(out: Path, quick: bool) -> dict[str, float]:
    """delta and clip_range from the unconstrained run's D and |r - 1| medians (cached in out/calibration.json)."""
    import statistics

    path = out / "calibration.json"
    if path.exists():
        return json.loads(path.read_text())
    steps = 4 if quick else CALIBRATION_STEPS
    overrides = {"loss": "none", **(QUICK_OVERRIDES if quick else STUDY_OVERRIDES)}
    job = {"overrides": overrides, "seed": 100, "steps": steps, "eval_every": EVAL_EVERY, "measure_ratio": True}
    result = run_job(job)
    d50 = [v for s, v in sorted(result["series"].get("kl_old/p50", {}).items()) if s > 1]
    d90 = [v for s, v in sorted(result["series"].get("kl_old/p90", {}).items()) if s > 1]
    r50 = [a for a, _ in result["ratio_dev"]]
    r90 = [b for _, b in result["ratio_dev"]]
    calibration = {
        "steps": steps,
        "D_p50": statistics.median(d50),
        "D_p90": statistics.median(d90),
        "abs_r_minus_1_p50": statistics.median(r50),
        "abs_r_minus_1_p90": statistics.median(r90),
        "delta": statistics.median(d50),
        "clip_range": min(statistics.median(r50), 0.5),
        "seconds": result["seconds"],
    }
    path.write_text(json.dumps(calibration, indent=2))
    return calibration


def jobs_of(cells: list[Cell], calibration: dict[str, float], quick: bool) -> list[dict[str, Any]]:
    eval_every = 2 if quick else EVAL_EVERY  # quick runs are 4-6 steps: evaluate every other step
    out = []
    for cell in cells:
        overrides = {**(QUICK_OVERRIDES if quick else STUDY_OVERRIDES), **METHODS[cell.method], **cell.overrides}
        if cell.thresholds == "calibrated" and cell.method in ("dppo", "clip", "dppo_symmetric", "dppo_first_order"):
            key = "clip_range" if cell.method == "clip" else "delta"
            overrides.setdefault(key, calibration[key])
        for seed in range(cell.seeds):
            job = {
                "cell": cell.key,
                "overrides": overrides,
                "seed": seed,
                "steps": cell.steps,
                "eval_every": eval_every,
            }
            out.append(job)
    return out


def cached(out: Path, job: dict[str, Any]) -> Path:
    return out / "runs" / f"{job['cell']}-s{job['seed']}.json"


def run_all(jobs: list[dict[str, Any]], out: Path, workers: int) -> dict[str, list[dict[str, Any]]]:
    """Every job not yet cached, `workers` processes at a time (none when workers is 0); returns cell key -> the
    cached results in seed order (jobs without a cached run left out)."""
    import multiprocessing

    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not cached(out, j).exists()]
    if todo and workers > 0:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, j): j for j in todo}
            for i, future in enumerate(as_completed(futures), 1):
                j = futures[future]
                result = {**future.result(), "job": j}
                cached(out, j).write_text(json.dumps(result))
                print(f"[{i}/{len(todo)}] {j['cell']} seed {j['seed']}: {result['seconds']:.0f} s", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for j in (j for j in jobs if cached(out, j).exists()):
        data = json.loads(cached(out, j).read_text())
        data["series"] = {k: {int(s): v for s, v in pts.items()} for k, pts in data["series"].items()}
        results.setdefault(j["cell"], []).append(data)
    return results


def study_size(cells: dict[str, list[Cell]]) -> str:
    """Runs and training steps of the full study, for the doc."""
    every = [c for cs in cells.values() for c in cs]
    runs = sum(c.seeds for c in every)
    steps = sum(c.seeds * c.steps for c in every) + CALIBRATION_STEPS
    return f"{runs} runs, {steps:,} training steps (+ a {CALIBRATION_STEPS}-step calibration run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke pass: 4-6 steps, 2 seeds (verdicts mean nothing).")
    parser.add_argument("--workers", type=int, default=2, help="Training processes at a time (default 2).")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"Run cache (default {STUDY_CACHE}, quick {QUICK_CACHE})."
    )
    parser.add_argument(
        "--report-only", action="store_true", help="Train nothing: the doc from the cached runs (a partial study)."
    )
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned training processes
    out = args.out or (QUICK_CACHE if args.quick else STUDY_CACHE)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    missing = {m: why for m in METHODS if (why := available(m)) is not None}
    cells = {claim: [c for c in cs if c.method not in missing] for claim, cs in study_cells(args.quick).items()}
    if args.report_only and not (out / "calibration.json").exists():
        parser.error(f"--report-only: no calibration run cached under {out}; run the study first")
    calibration = calibrate(out, args.quick)
    print(f"calibration: {calibration}", flush=True)
    jobs = [j for cs in cells.values() for j in jobs_of(cs, calibration, args.quick)]
    results = run_all(jobs, out, 0 if args.report_only else args.workers)
    pending = [f"{j['cell']} seed {j['seed']}" for j in jobs if not cached(out, j).exists()]
    from claims_report import write_report

    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/paper_claims.py" + (" --quick" if args.quick else "")
    command += " --report-only" if pending else ""
    write_report(
        args.doc,
        cells=cells,
        results=results,
        pending=pending,
        calibration=calibration,
        missing=missing,
        quick=args.quick,
        command=command,
        minutes=(time.perf_counter() - started) / 60,
        study_size=study_size(study_cells(quick=False)),
        cache=STUDY_CACHE.relative_to(STUDY_CACHE.parents[2]),  # the study's, relative to the repo
        cell_info={c.key: asdict(c) for cs in cells.values() for c in cs},
        protocol=__doc__ or "",
    )
    print(f"wrote {args.doc} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
