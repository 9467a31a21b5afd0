"""Evaluation with the deterministic ODE sampler on fixed prompts and seeds (spec §6), in-run and as a job."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.callbacks import Callback, NullCallback, Sample
from trainer.checkpoint import checkpoint_step, load_weights
from trainer.config import EvalConfig, TrainConfig
from trainer.images import to_uint8_hwc
from trainer.models.base import FlowModel
from trainer.models.families import load_model
from trainer.prompts import load_prompts
from trainer.rewards import RewardFn, build_reward
from trainer.sampling import sample_ode

EVAL_BATCH = 64  # images per forward pass during in-run evaluation


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[Sample]


def score_images(rewards: dict[str, RewardFn], images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Every reward on every image: name -> (B,) float32 on CPU."""
    return {name: fn(images, prompts).float().cpu() for name, fn in rewards.items()}


def seed_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One fixed initial noise per seed, independent of batch composition: (B, *shape)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@contextmanager
def swapped_weights(model: FlowModel, weights: dict[str, torch.Tensor] | None):
    """Temporarily load `weights` (e.g. the EMA) into the model's trainable parameters."""
    if weights is None:
        yield
        return
    current = model.trainable_state_dict()
    model.load_trainable_state_dict(weights)
    try:
        yield
    finally:
        model.load_trainable_state_dict(current)


@torch.no_grad()
def generate(
    model: FlowModel, prompts: list[str], seeds: list[int], num_steps: int, guidance_scale: float, batch_size: int
) -> torch.Tensor:
    """ODE-sampled images (B, 3, H, W) in [0, 1] for prompt i with initial noise of seed i."""
    model.eval()
    sigmas = model.sigmas(num_steps)
    images = []
    for lo in range(0, len(prompts), batch_size):
        batch = prompts[lo : lo + batch_size]
        embeds = model.encode_prompts(batch)
        noise = seed_noise(seeds[lo : lo + batch_size], model.sample_shape).to(model.device)
        final = sample_ode(lambda x, s, e=embeds: model.velocity(x, s, e, guidance_scale), noise, sigmas, model.dtype)
        images.append(model.decode(final))
    return torch.cat(images)


def _weighted_total(config: TrainConfig, table: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(spec.weight * table[spec.name] for spec in config.trained_rewards)


def _to_samples(prompts, seeds, images, table, offset: int = 0) -> list[Sample]:
    pixels = to_uint8_hwc(images)
    return [
        Sample(
            prompt=p,
            seed=s,
            index=offset + i,
            image=np.ascontiguousarray(pixels[i]),
            rewards={name: float(v[i]) for name, v in table.items()},
        )
        for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]


def build_rewards(config: TrainConfig, device: str | torch.device) -> dict[str, RewardFn]:
    """Every reward of the run, monitors (weight 0) included: name -> callable."""
    return {spec.name: build_reward(spec.name, spec.options, device) for spec in config.rewards}


def evaluation_metrics(model, config: TrainConfig, prompts: list[str], rewards, ema=None) -> dict[str, float]:
    """Held-out rewards of the current (or EMA) weights: eval/reward/<name>/mean and eval/reward/total/mean.

    The prompt set is cycled to config.eval_num_samples images (seed = image index), the same for every run.
    """
    prompts = [prompts[i % len(prompts)] for i in range(config.eval_num_samples)]
    seeds, guidance = list(range(len(prompts))), config.effective_eval_guidance_scale
    with swapped_weights(model, ema):
        images = generate(model, prompts, seeds, config.eval_num_steps, guidance, EVAL_BATCH)
    table = score_images(rewards, images, prompts)
    metrics = {f"eval/reward/{name}/mean": v.mean().item() for name, v in table.items()}
    metrics["eval/reward/total/mean"] = _weighted_total(config, table).mean().item()
    return metrics


def logged_samples(model, config: TrainConfig, prompts: list[str], rewards, ema=None) -> list[Sample]:
    """The run's fixed sample set: the first num_logged_samples held-out prompts, seed = index (same across runs)."""
    chosen = prompts[: config.num_logged_samples]
    seeds, guidance = list(range(len(chosen))), config.effective_eval_guidance_scale
    with swapped_weights(model, ema):
        images = generate(model, chosen, seeds, config.eval_num_steps, guidance, EVAL_BATCH)
    return _to_samples(chosen, seeds, images, score_images(rewards, images, chosen))


def evaluate(
    config: EvalConfig,
    *,
    checkpoint: Path | None,
    callback: Callback | None = None,
    device: str | torch.device = "cpu",
    model: FlowModel | None = None,
) -> EvalResult:
    """The evaluation job: a checkpoint (None = the base model) on fixed prompts x seeds, ODE sampler.

    Reports every image with its rewards through `callback.on_samples(step, ...)`, where step is the checkpoint's
    training step (0 for the base model), and the means as `eval/reward/<name>/mean` through on_metrics.
    """
    callback = callback or NullCallback()
    train_config = config.train
    model = model or load_model(train_config, device)
    step = 0
    if checkpoint is not None:
        model.load_trainable_state_dict(load_weights(checkpoint, config.use_ema, model.device))
        step = checkpoint_step(checkpoint) or 0  # the base model, or a folder of another name: step 0
    rewards = build_rewards(train_config, model.device)
    base_prompts = load_prompts(config.prompt_set)[: config.num_prompts]
    prompts = [p for p in base_prompts for _ in range(config.samples_per_prompt)]
    seeds = [config.seed + j for _ in base_prompts for j in range(config.samples_per_prompt)]
    samples: list[Sample] = []
    totals: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, len(prompts), config.batch_size):
        if callback.should_stop():
            break
        batch_prompts, batch_seeds = prompts[lo : lo + config.batch_size], seeds[lo : lo + config.batch_size]
        images = generate(
            model, batch_prompts, batch_seeds, config.num_steps, config.effective_guidance_scale, config.batch_size
        )
        table = score_images(rewards, images, batch_prompts)
        table["total"] = _weighted_total(train_config, table)
        batch_samples = _to_samples(batch_prompts, batch_seeds, images, table, offset=lo)
        callback.on_samples(step, batch_samples)
        samples.extend(batch_samples)
        for name, values in table.items():
            totals.setdefault(name, []).append(values)
    metrics = {f"eval/reward/{name}/mean": torch.cat(v).mean().item() for name, v in totals.items()}
    callback.on_metrics(step, metrics)
    return EvalResult(metrics=metrics, samples=samples)
