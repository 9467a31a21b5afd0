"""The shapes domain's own cost (prints a table, not a test): rendering and verifying 256 images, target < 50 ms each.

    .venv/bin/python bench/shapes_domain.py

Both run every RL step (the verifier on every rollout) or every pretraining batch (the renderer): at more than a
few per cent of a step (~1 s on 2 cores) they would show in bench/trainer_overhead.py's reward row.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from trainer.rewards import build_reward
from trainer.shapes import all_prompts, render

IMAGES, REPEATS, TARGET_S = 256, 5, 0.05


def best_of(fn) -> float:
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    prompts = (all_prompts() * 3)[:IMAGES]
    rng = np.random.default_rng(0)
    images = torch.from_numpy(render(prompts, rng))
    verifier = build_reward("shapes")
    rows = [
        ("render", best_of(lambda: render(prompts, rng))),
        ("shapes verifier", best_of(lambda: verifier(images, prompts))),
    ]
    print(f"\n{IMAGES} images at 32x32, best of {REPEATS}, {torch.get_num_threads()} threads")
    print(f"{'what':18s} {'ms':>8s} {'target':>9s}  ok")
    for name, seconds in rows:
        print(f"{name:18s} {seconds * 1000:8.1f} {'< 50 ms':>9s}  {'yes' if seconds < TARGET_S else 'NO'}")


if __name__ == "__main__":
    main()
