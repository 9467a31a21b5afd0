"""The Flow-DPPO / Flow-GRPO training loop (spec §6): rollout -> rewards -> advantages -> inner epochs -> report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.advantages import gdpo_advantages, group_advantages, zero_std_fraction
from trainer.callbacks import Callback, NullCallback
from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.divergence import gaussian_kl
from trainer.evaluate import build_rewards, evaluation_metrics, logged_samples, score_images
from trainer.losses import LOSSES, LossInputs, compute_loss
from trainer.models import FlowModel, load_model, select_embeds
from trainer.prompts import load_prompts
from trainer.rewards import RewardFn
from trainer.rollout import Rollout, collect_rollout, step_generator
from trainer.sampling import gaussian_log_prob, transition

log = logging.getLogger(__name__)

SELFTEST_TOLERANCE = 1e-3  # spec §4: warn when the first-step ratio/KL deviates more than this


@dataclass
class RunResult:
    steps_completed: int
    stopped: bool  # True when should_stop() ended the run early
    final_metrics: dict[str, float]
    out_dir: Path


def train(
    config: TrainConfig,
    callback: Callback | None = None,
    *,
    out_dir: Path,
    device: str | torch.device = "cpu",
    model: FlowModel | None = None,
    rewards: dict[str, RewardFn] | None = None,
    resume: bool = True,
) -> RunResult:
    """Train `config` and report every step through `callback`; resume from the latest checkpoint in out_dir."""
    callback = callback or NullCallback()
    out_dir = Path(out_dir)
    model = model or load_model(config, device)
    rewards = rewards or build_rewards(config, device)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay, eps=config.adam_eps
    )
    ema = {n: v.float().clone() for n, v in model.trainable_state_dict().items()} if config.ema_decay else None
    start = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location=model.device)
        model.load_trainable_state_dict(state.trainable)
        optimizer.load_state_dict(state.optimizer)
        ema, start = state.ema, state.step
        log.info("resumed from %s at step %d", ckpt, start)
    train_prompts = load_prompts(config.train_prompts)
    eval_prompts = load_prompts(config.eval_prompts)
    sigmas = model.sigmas(config.num_steps)
    if start == 0 and config.eval_every:  # the base model's held-out reward, the curves' starting point
        callback.on_metrics(0, evaluation_metrics(model, config, eval_prompts, rewards, ema))

    metrics: dict[str, float] = {}
    step, stopped = start, False
    while step < config.steps:
        if callback.should_stop():
            stopped = True
            break
        step += 1
        t0 = time.perf_counter()
        # 1. rollout
        rollout = collect_rollout(model, config, train_prompts, sigmas, step)
        t1 = time.perf_counter()
        # 2. rewards
        images = model.decode(rollout.traj.final)
        reward_table = score_images(rewards, images, rollout.prompts)  # name -> (B,)
        t2 = time.perf_counter()
        # 3. advantages
        adv, metrics = _advantages(config, reward_table, rollout.group_ids)
        # 4. inner epochs x minibatches
        metrics.update(_update(model, optimizer, config, rollout, adv, ema, step))
        t3 = time.perf_counter()
        # 5. report
        metrics.update(_timing(t0, t1, t2, t3, len(rollout.prompts)))
        if config.eval_every and step % config.eval_every == 0:
            metrics.update(evaluation_metrics(model, config, eval_prompts, rewards, ema))
        callback.on_metrics(step, metrics)
        if config.sample_every and config.num_logged_samples and step % config.sample_every == 0:
            callback.on_samples(step, logged_samples(model, config, eval_prompts, rewards, ema))
        if step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
            _checkpoint(out_dir, step, model, optimizer, ema, config, callback)
    if stopped and step > start:
        _checkpoint(out_dir, step, model, optimizer, ema, config, callback)
    return RunResult(steps_completed=step, stopped=stopped, final_metrics=metrics, out_dir=out_dir)


def _advantages(config: TrainConfig, rewards: dict[str, torch.Tensor], group_ids: torch.Tensor):
    """Aggregate rewards and compute per-sample advantages (spec §5); returns (adv (B,), reward metrics)."""
    metrics: dict[str, float] = {}
    for name, values in rewards.items():
        metrics[f"reward/{name}/mean"] = values.mean().item()
        metrics[f"reward/{name}/std"] = values.std(unbiased=False).item()
    trained = config.trained_rewards
    weights = torch.tensor([r.weight for r in trained])
    table = torch.stack([rewards[r.name] for r in trained], dim=1)  # (B, K)
    total = table @ weights  # (B,)
    metrics["reward/total/mean"] = total.mean().item()
    if config.effective_reward_aggregation == "gdpo":
        adv = gdpo_advantages(table, weights, group_ids)
        metrics["zero_std_fraction"] = zero_std_fraction(table, group_ids)
    else:
        adv = group_advantages(total, group_ids, global_std=config.advantage_std == "global")
        metrics["zero_std_fraction"] = zero_std_fraction(total, group_ids)
    clip = config.effective_advantage_clip
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    metrics["adv/abs_mean"] = adv.abs().mean().item()
    return adv, metrics


def _update(model, optimizer, config: TrainConfig, rollout: Rollout, adv, ema, step: int) -> dict[str, float]:
    """Inner epochs x minibatches of policy-gradient steps on one rollout (spec §6); returns the step's stats."""
    model.train()
    B = len(rollout.prompts)
    embeds = model.encode_prompts(rollout.prompts)
    adv = adv.to(model.device)
    collected: list[tuple[int, dict[str, float]]] = []
    kl_all, grad_norms = [], []
    for epoch in range(config.inner_epochs):
        order = torch.randperm(B, generator=step_generator(config.seed, step, purpose=100 + epoch))
        for mb, rows in enumerate(order.split(config.minibatch_size)):
            optimizer.zero_grad(set_to_none=True)
            chunk = config.micro_batch_size or len(rows)
            for micro in rows.split(chunk):
                stats, kl = _loss_backward(model, config, rollout, embeds, adv, micro, scale=len(micro) / len(rows))
                collected.append((len(micro), stats))
                kl_all.append(kl)
                if epoch == 0 and mb == 0:  # first optimizer step after the rollout: pi_theta == pi_old
                    stats["selftest/ratio_dev"] = max(abs(stats["ratio/max"] - 1), abs(stats["ratio/min"] - 1))
                    stats["selftest/kl_dev"] = kl.max().item()
            grad_norms.append(torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.max_grad_norm))
            optimizer.step()
            if ema is not None:
                _ema_update(ema, model, config.ema_decay)
    out = _combine_stats(collected)
    kl_cat = torch.cat(kl_all).flatten()
    out.update(
        {
            "kl_old/mean": kl_cat.mean().item(),
            "kl_old/max": kl_cat.max().item(),
            "kl_old/p50": kl_cat.quantile(0.5).item(),
            "kl_old/p90": kl_cat.quantile(0.9).item(),
            "grad_norm": torch.stack(grad_norms).float().mean().item(),
            "lr": optimizer.param_groups[0]["lr"],
        }
    )
    if config.beta == 0 and rollout.traj.mean_ref is not None:  # monitor only: pi_old vs pi_ref at rollout
        traj = rollout.traj
        n = traj.mean_ref.shape[0]
        std = traj.std.repeat(n).view(-1, 1, 1, 1)
        ref_kl = gaussian_kl(
            traj.mean_old[:n].flatten(0, 1), traj.mean_ref.flatten(0, 1), std, config.logprob_reduction
        )
        out["kl_ref/mean"] = ref_kl.mean().item()
    if out.get("selftest/ratio_dev", 0.0) > SELFTEST_TOLERANCE or out.get("selftest/kl_dev", 0.0) > SELFTEST_TOLERANCE:
        log.warning(
            "self-test: first-step ratio/KL deviate from 1/0 by %.2e/%.2e (numerics or a nondeterministic model)",
            out["selftest/ratio_dev"],
            out["selftest/kl_dev"],
        )
    return out


def _loss_backward(model, config: TrainConfig, rollout: Rollout, embeds, adv, rows, scale: float):
    """Recompute the policy on `rows` for all their SDE steps at once, backprop the loss; returns (stats, D)."""
    traj, sigmas = rollout.traj, rollout.sigmas
    n, S = len(rows), traj.x.shape[1]
    steps = torch.tensor(traj.step_indices)
    sigma = sigmas[steps].repeat(n).to(model.device)  # (n·S,) one forward over every (sample, step) pair
    sigma_next = sigmas[steps + 1].repeat(n).to(model.device)
    std = traj.std.repeat(n).view(-1, 1, 1, 1).to(model.device)  # (n·S, 1, 1, 1)
    x = traj.x[rows].flatten(0, 1)  # (n·S, C, H, W)
    emb = select_embeds(embeds, rows.repeat_interleave(S).to(model.device))  # (n·S, ...)
    v = model.velocity(x, sigma, emb, config.guidance_scale)
    mean_new, _ = transition(config.sampler, v, x, sigma, sigma_next, config.effective_noise_level, sigmas[1])
    logp_new = gaussian_log_prob(traj.x_next[rows].flatten(0, 1), mean_new, std, config.logprob_reduction).view(n, S)
    with torch.set_grad_enabled(LOSSES[config.loss].kl_grad):  # D drives the mask, without gradient (spec §3)
        kl = gaussian_kl(traj.mean_old[rows].flatten(0, 1), mean_new, std, config.logprob_reduction).view(n, S)
    inputs = LossInputs(
        logp_new=logp_new,
        logp_old=traj.logp_old[rows],
        advantages=adv[rows],
        kl=kl,
        std=traj.std.to(model.device),
        dt=(sigmas[steps + 1] - sigmas[steps]).to(model.device),
    )
    loss, tensor_stats = compute_loss(config.loss, inputs, config)
    stats = {key: value.item() for key, value in tensor_stats.items()}
    stats["loss/policy"] = loss.item()
    if config.beta > 0:
        kl_ref = gaussian_kl(mean_new, traj.mean_ref[rows].flatten(0, 1), std, config.logprob_reduction)  # (n·S,)
        loss = loss + config.beta * kl_ref.mean()
        stats["kl_ref/mean"] = kl_ref.mean().item()
    stats["loss/total"] = loss.item()
    (loss * scale).backward()
    return stats, kl.detach()


def _combine_stats(collected: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Weighted mean over micro-batches; min/max and self-test keys keep their extreme."""
    out: dict[str, float] = {}
    for key in collected[0][1]:
        values = [(n, s[key]) for n, s in collected if key in s]
        if key.endswith("/min"):
            out[key] = min(v for _, v in values)
        elif key.endswith("/max") or key.startswith("selftest/"):  # a deviation is its worst case
            out[key] = max(v for _, v in values)
        else:
            out[key] = sum(n * v for n, v in values) / sum(n for n, _ in values)
    return out


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: FlowModel, decay: float) -> None:
    for name, value in model.trainable_state_dict().items():
        ema[name].lerp_(value.float(), 1 - decay)


def _timing(t0: float, t1: float, t2: float, t3: float, images: int) -> dict[str, float]:
    return {
        "time/rollout_s": t1 - t0,
        "time/reward_s": t2 - t1,
        "time/train_s": t3 - t2,
        "throughput/images_per_s": images / max(t3 - t0, 1e-9),
    }


def _checkpoint(out_dir, step, model, optimizer, ema, config: TrainConfig, callback: Callback) -> None:
    path = save_checkpoint(out_dir, step, model.trainable_state_dict(), optimizer, ema, config.to_json())
    model.export_weights(path / "lora")  # SD3/FLUX LoRA: loadable with diffusers' load_lora_weights
    callback.on_checkpoint(step, path)
