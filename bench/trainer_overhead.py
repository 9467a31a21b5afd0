"""Trainer overhead: one RL step against the bare network passes that step must do (target <= 15 %).

Bare work of one step = rollout forwards (num_steps passes over the batch, plus the reference passes that measure
kl_ref) + training forward+backward over every (sample, SDE step) pair, per minibatch and inner epoch, + rewards.
Overhead = step time / bare work - 1: the sampler bookkeeping, losses, advantages, optimizer and metrics.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from trainer.callbacks import NullCallback
from trainer.models.families import load_model
from trainer.presets import get_preset
from trainer.rollout import KL_REF_MONITOR_SAMPLES
from trainer.train import train


class StepTimes(NullCallback):
    def __init__(self):
        self.times: list[float] = []
        self.reward: list[float] = []
        self.last = time.perf_counter()

    def on_metrics(self, step, metrics):
        now = time.perf_counter()
        if step > 0:
            self.times.append(now - self.last)
            self.reward.append(metrics["time/reward_s"])
        self.last = now


def bare_passes(config, model, repeats: int) -> tuple[float, float]:
    """Seconds of (rollout forwards, training forward+backward) for one step's shapes, median over repeats."""
    B, S = config.rollout_batch_size, config.num_sde_steps
    shape = model.sample_shape
    embeds = model.encode_prompts(["a red circle in the top left"] * B)
    sigma = torch.full((B,), 0.5)
    params = model.trainable_parameters()
    fwd, train_t = [], []
    for _ in range(repeats):
        x = torch.randn(B, *shape)
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(config.num_steps):
                model.velocity(x, sigma, embeds)
            n_ref = min(KL_REF_MONITOR_SAMPLES, B)
            ref_embeds = {k: v[:n_ref] for k, v in embeds.items()}
            with model.reference():
                for _ in range(S):
                    model.velocity(x[:n_ref], sigma[:n_ref], ref_embeds)
        t1 = time.perf_counter()
        mb = config.minibatch_size * S
        mb_embeds = {k: v[:1].expand(mb, *v.shape[1:]) for k, v in embeds.items()}
        for _ in range(config.inner_epochs * config.num_minibatches):
            v = model.velocity(torch.randn(mb, *shape), torch.full((mb,), 0.5), mb_embeds)
            v.square().mean().backward()
            for p in params:
                p.grad = None
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        train_t.append(t2 - t1)
    return statistics.median(fwd), statistics.median(train_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="shapes-dppo")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = get_preset(args.preset).with_overrides(
        {"steps": args.steps, "eval_every": 0, "sample_every": 0, "checkpoint_every": 0}
    )
    model = load_model(config)
    times = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        train(config, times, out_dir=out, model=model)
    step = statistics.median(times.times[2:])  # skip warm-up steps
    reward = statistics.median(times.reward[2:])
    fwd, bwd = bare_passes(config, model, repeats=5)
    bare = fwd + bwd + reward
    rows = [
        ("trainer step (median)", step),
        ("bare rollout forwards (+ kl_ref monitor)", fwd),
        ("bare training forward+backward", bwd),
        ("reward computation", reward),
        ("bare work total", bare),
    ]
    print(
        f"\n{args.preset}: B={config.rollout_batch_size}, S={config.num_sde_steps}, T={config.num_steps}, "
        f"M={config.num_minibatches}, I={config.inner_epochs}, threads={args.threads}"
    )
    print(f"{'what':44s} {'seconds':>10s}")
    for name, value in rows:
        print(f"{name:44s} {value:10.4f}")
    overhead = step / bare - 1
    print(
        f"{'overhead (step / bare - 1)':44s} {overhead * 100:9.1f}%   target <= 15%  "
        f"{'OK' if overhead <= 0.15 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
