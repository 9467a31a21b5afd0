"""RL quality on the built-in domain: every method of the paper's comparison, several seeds, equal rollouts.

Methods (issue 12): the shapes-<method> presets: clip (Flow-GRPO), dppo and its mask variants (symmetric,
first_order; spec §9), grpo-guard (§10), nft (Diffusion-NFT, §11); each identical but for what the method needs.
Settings: the presets as shipped (I=1), two inner epochs (I=2: the paper's multi-epoch claim; nft trains each rollout
once, so it has no I=2 row), and a setting where the trust region binds (8 minibatches per rollout and lr 3e-4).
Reports final and best held-out reward (ODE sampler, held-out prompts), KL to the base model, the method's own
trust-region metric (the loss registry's: mask/fraction, clip/fraction; nft has none) and wall time, mean ± std
over seeds. Example: `python bench/rl_quality.py --settings "I=1 (preset)" --workers 2`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

SETTINGS = {
    "I=1 (preset)": {},
    "I=2": {"inner_epochs": 2},
    "binding: M=8, lr=3e-4": {"num_minibatches": 8, "learning_rate": 3e-4},
}
METHODS = {
    "clip": "shapes-clip",
    "dppo": "shapes-dppo",
    "dppo-symmetric": "shapes-dppo-symmetric",
    "dppo-first-order": "shapes-dppo-first-order",
    "grpo-guard": "shapes-grpo-guard",
    "nft": "shapes-nft",
}


def applies(method: str, setting: str) -> bool:
    """nft refuses inner_epochs > 1 (spec §11: one pass per rollout, as the official code)."""
    return not (method == "nft" and SETTINGS[setting].get("inner_epochs", 1) > 1)


def run_one(preset: str, overrides: dict, seed: int, steps: int, eval_every: int) -> dict[str, float]:
    import torch

    from trainer.callbacks import NullCallback
    from trainer.loss_registry import LOSSES
    from trainer.presets import get_preset
    from trainer.train import train

    torch.set_num_threads(1)

    config = get_preset(preset).with_overrides(
        {**overrides, "seed": seed, "steps": steps, "eval_every": eval_every, "sample_every": 0, "checkpoint_every": 0}
    )
    constraint = LOSSES[config.loss].trust_region_metric  # the method's own (None for nft)

    class Collect(NullCallback):
        def __init__(self):
            self.eval: list[float] = []
            self.kl_ref = 0.0
            self.fraction: list[float] = []

        def on_metrics(self, step, metrics):
            if "eval/reward/total/mean" in metrics:
                self.eval.append(metrics["eval/reward/total/mean"])
            if step > 0:
                self.kl_ref = metrics["kl_ref/mean"]
                if constraint is not None:
                    self.fraction.append(metrics[constraint])

    collect = Collect()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train(config, collect, out_dir=out)
    return {
        "base": collect.eval[0],
        "final": collect.eval[-1],
        "best": max(collect.eval),
        "kl_ref": collect.kl_ref,
        "fraction": statistics.mean(collect.fraction) if collect.fraction else float("nan"),
        "constraint": constraint or "-",
        "time": time.perf_counter() - t0,
    }


def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if any(v != v for v in values):  # NaN: the method has no such metric (nft's trust region)
        return "-"
    mean = statistics.mean(values) * scale
    std = statistics.pstdev(values) * scale
    return f"{mean:.{digits}f}±{std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    jobs = [(s, m, seed) for s in args.settings for m in args.methods if applies(m, s) for seed in range(args.seeds)]
    jobs.sort(key=lambda job: job[1] != "nft")  # the slowest runs first: two workers finish closer together
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {
            job: pool.submit(run_one, METHODS[job[1]], SETTINGS[job[0]], job[2], args.steps, args.eval_every)
            for job in jobs
        }
        results = {}
        for future in as_completed(futures.values()):  # one line per finished run: a partial table survives a kill
            job = next(j for j, f in futures.items() if f is future)
            results[job] = r = future.result()
            print(
                f"done {job[0]} | {job[1]} | seed {job[2]}: base {r['base']:.3f} final {r['final']:.3f} best "
                f"{r['best']:.3f} kl_ref {r['kl_ref']:.2e} {r['constraint']} {r['fraction']:.3f} {r['time']:.0f}s",
                flush=True,
            )
    print(f"\nheld-out verifier reward (ODE, 40 steps), {args.steps} RL steps, {args.seeds} seeds, mean±std")
    header = (
        f"{'setting':24s} {'method':17s} {'base':>12s} {'final':>12s} {'best':>12s} {'KL_ref e-3':>12s} "
        f"{'constraint':>14s} {'value':>12s} {'time s':>8s}"
    )
    print(header)
    print("-" * len(header))
    for setting in args.settings:
        for method in (m for m in args.methods if applies(m, setting)):
            rs = [results[(setting, method, seed)] for seed in range(args.seeds)]

            def col(key: str, rs=rs) -> list[float]:
                return [r[key] for r in rs]

            print(
                f"{setting:24s} {method:17s} {fmt(col('base')):>12s} {fmt(col('final')):>12s} "
                f"{fmt(col('best')):>12s} {fmt(col('kl_ref'), 1e3):>12s} {rs[0]['constraint']:>14s} "
                f"{fmt(col('fraction')):>12s} {statistics.mean(col('time')):8.0f}"
            )


if __name__ == "__main__":
    main()
