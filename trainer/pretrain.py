"""Pretraining of the built-in base model by plain flow matching on rendered shapes (rebuilds the shipped base).

Loss (rectified flow, spec §1): x_s = (1-s)·x0 + s·eps, target v = eps - x0, s ~ logit-normal (SD3's choice).
The base is imperfect on purpose (held-out verifier reward well below 1) so that RL has room to improve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainer.config import TrainConfig
from trainer.evaluate import evaluation_metrics
from trainer.models.builtin import BuiltinModel, new_networks, save_base
from trainer.prompts import load_prompts
from trainer.rewards import build_reward
from trainer.shapes import render

CAPTION_DROPOUT = 0.1  # empty prompts, so classifier-free guidance works on the built-in model


def pretrain_base(
    out_path: Path,
    steps: int = 400,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    eval_samples: int = 72,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Fit a fresh tiny model to `shapes:train` and save it to `out_path`; returns its held-out verifier reward."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_prompts = load_prompts("shapes:train")
    vocab = sorted({w for p in load_prompts("shapes:all") for w in p.lower().split()})
    transformer, text_encoder = new_networks(vocab)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.05)
    transformer.train()
    text_encoder.train()
    for step in range(1, steps + 1):
        prompts = [train_prompts[i] for i in rng.integers(len(train_prompts), size=batch_size)]
        x0 = torch.from_numpy(render(prompts, rng)) * 2 - 1  # (B, 3, H, W) in [-1, 1]
        prompts = ["" if u < CAPTION_DROPOUT else p for p, u in zip(prompts, rng.random(batch_size), strict=True)]
        eps = torch.randn_like(x0)
        s = torch.sigmoid(torch.randn(batch_size))  # logit-normal timesteps
        s_b = s.view(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1) against any latent rank
        xs = (1 - s_b) * x0 + s_b * eps
        embeds = text_encoder(prompts)
        v = transformer(
            hidden_states=xs,
            encoder_hidden_states=embeds["tokens"],
            pooled_projections=embeds["pooled"],
            timestep=s * 1000,
        ).sample
        loss = torch.nn.functional.mse_loss(v, eps - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step, loss.item())
    info = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed}
    info.update(heldout_reward(BuiltinModel(transformer, text_encoder), eval_samples))
    save_base(out_path, transformer, text_encoder, info)
    return info


def heldout_reward(model: BuiltinModel, num_samples: int) -> dict[str, float]:
    """Held-out verifier rewards (overall and per attribute) of ODE samples, measured as RL runs measure them."""
    names = ("shapes", "shapes_color", "shapes_shape", "shapes_position")
    config = TrainConfig(rewards=[{"name": n} for n in names], eval_num_samples=num_samples)
    rewards = {n: build_reward(n) for n in names}
    metrics = evaluation_metrics(model, config, load_prompts(config.eval_prompts), rewards)
    return {k: v for k, v in metrics.items() if k != "eval/reward/total/mean"}
