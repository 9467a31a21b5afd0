"""The Flow-DPPO / Flow-GRPO training loop (spec §6): rollout -> rewards -> advantages -> inner epochs -> report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.advantages import gdpo_advantages, group_advantages, zero_std_fraction
from trainer.callbacks import Callback, NullCallback
from trainer.config import TrainConfig
from trainer.distributed import Ranks
from trainer.divergence import gaussian_kl
from trainer.evaluate import build_rewards, evaluation_metrics, logged_samples, score_images
from trainer.loss_registry import LOSSES, LossInputs, compute_loss
from trainer.metrics import check_finite
from trainer.models.base import FlowModel, select_embeds
from trainer.models.families import load_model
from trainer.nft import collect_ode_rollout, nft_update
from trainer.prompts import load_prompts
from trainer.rewards import RewardFn
from trainer.rollout import Rollout, collect_rollout, step_generator
from trainer.sampling import gaussian_log_prob, transition
from trainer.state import TrainState
from trainer.stats import StepStats

log = logging.getLogger(__name__)

SELFTEST_TOLERANCE = 1e-3  # spec §4: warn when the first-step ratio/KL deviates more than this


@dataclass
class RunResult:
    steps_completed: int
    stopped: bool  # True when should_stop() ended the run early
    final_metrics: dict[str, float]
    out_dir: Path


@dataclass
class _Run:
    """What a run holds fixed while it trains: where it reports and what it is scored on."""

    config: TrainConfig
    callback: Callback
    out_dir: Path
    rewards: dict[str, RewardFn]
    train_prompts: list[str]
    eval_prompts: list[str]
    ranks: Ranks  # spec §12: this process's rank of W; W = 1 is the plain single-process loop


def train(
    config: TrainConfig,
    callback: Callback | None = None,
    *,
    out_dir: Path,
    device: str | torch.device = "cpu",
    model: FlowModel | None = None,
    rewards: dict[str, RewardFn] | None = None,
    resume: bool = True,
    ranks: Ranks | None = None,
) -> RunResult:
    """Train `config` and report every step through `callback`; resume from the latest checkpoint in out_dir.

    Under torchrun (`ranks`, default: the initialised process group) every rank calls train() alike; rank 0 alone
    reports through `callback`, evaluates and writes checkpoints (spec §12).
    """
    ranks = (ranks or Ranks.current()).expect(config.num_processes)
    model = model or load_model(config, device)
    run = _Run(
        config=config,
        callback=ranks.main_only(callback or NullCallback()),
        out_dir=Path(out_dir),
        rewards=rewards or build_rewards(config, device),
        train_prompts=load_prompts(config.train_prompts),
        eval_prompts=load_prompts(config.eval_prompts),
        ranks=ranks,
    )
    state = TrainState.create(config, model)
    if resume and (path := state.restore(run.out_dir)) is not None:
        log.info("resumed from %s at step %d", path, state.step)
    start, stopped, metrics = state.step, False, {}
    sigmas = model.sigmas(config.num_steps)
    collect, update = FAMILY_STAGES[LOSSES[config.loss].family]
    if start == 0 and config.eval_every and ranks.is_main:  # the base model's held-out reward, the curves' start
        run.callback.on_metrics(0, evaluation_metrics(model, config, run.eval_prompts, run.rewards, state.ema))
    while state.step < config.steps and not (stopped := ranks.any(run.callback.should_stop())):  # agreed by all
        state.step += 1
        t0 = time.perf_counter()
        # 1. rollout: P prompts x G samples, every SDE step recorded (nft: ODE samples of the old weights, spec §11)
        mine = ranks.rows(config.rollout_batch_size)  # whole groups per rank (spec §12)
        rollout = ranks.gather_rollout(collect(model, config, run.train_prompts, sigmas, state.step, mine))
        t1 = time.perf_counter()
        # 2. rewards: every reward on the decoded images, name -> (B,) (each rank scores its rows, all gathered)
        local_rewards = score_images(run.rewards, model.decode(rollout.final[mine]), rollout.prompts[mine])
        reward_table = ranks.gather_rewards(local_rewards)
        t2 = time.perf_counter()
        # 3. advantages (spec §5)
        adv, metrics = _advantages(config, reward_table, rollout.group_ids)
        # 4. inner epochs x minibatches of the loss (spec §4, §6; nft: §11)
        metrics.update(update(state, config, rollout, adv, ranks))
        t3 = time.perf_counter()
        # 5. report: metrics, held-out evaluation, samples, checkpoint
        metrics.update(_timing(t0, t1, t2, t3, len(rollout.prompts)))
        check_finite(state.step, metrics)  # a diverged step fails the run, naming the step and the metric
        _report(run, state, metrics)
    if stopped and state.step > start:
        _checkpoint(run, state)
    ranks.barrier()  # no rank leaves before rank 0's checkpoint is complete
    return RunResult(steps_completed=state.step, stopped=stopped, final_metrics=metrics, out_dir=run.out_dir)


def _report(run: _Run, state: TrainState, metrics: dict[str, float]) -> None:
    """Held-out evaluation when due, the step's metrics, logged samples and a checkpoint when due (rank 0 only)."""
    config, step = run.config, state.step
    if not run.ranks.is_main:
        return
    if config.eval_every and step % config.eval_every == 0:
        metrics.update(evaluation_metrics(state.model, config, run.eval_prompts, run.rewards, state.ema))
    run.callback.on_metrics(step, metrics)
    if config.sample_every and config.num_logged_samples and step % config.sample_every == 0:
        run.callback.on_samples(step, logged_samples(state.model, config, run.eval_prompts, run.rewards, state.ema))
    if step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
        _checkpoint(run, state)


def _checkpoint(run: _Run, state: TrainState) -> None:
    if not run.ranks.is_main:
        return
    run.callback.on_checkpoint(state.step, state.save(run.out_dir, run.config))


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


def _update(
    state: TrainState, config: TrainConfig, rollout: Rollout, adv: torch.Tensor, ranks: Ranks | None = None
) -> dict[str, float]:
    """Inner epochs x minibatches of policy-gradient steps on one rollout (spec §6); returns the step's stats.

    With W ranks each takes an equal contiguous share of every global minibatch; DDP averages the shares' gradients,
    so each optimizer step is the single-process step on the whole minibatch (spec §12).
    """
    ranks = ranks or Ranks()
    model, optimizer = state.model, state.optimizer
    model.train()
    embeds = model.encode_prompts(rollout.prompts)
    adv = adv.to(model.device)
    stats, grad_norms = StepStats(), []
    for epoch in range(config.inner_epochs):
        order = torch.randperm(len(adv), generator=step_generator(config.seed, state.step, purpose=100 + epoch))
        for mb, rows in enumerate(order.split(config.minibatch_size)):
            optimizer.zero_grad(set_to_none=True)
            mine = ranks.shard(rows)  # (M/W,) this rank's share of the minibatch; all of it when W = 1
            chunks = mine.split(config.micro_batch_size or len(mine))
            for i, micro in enumerate(chunks):
                scale = len(micro) / len(mine)  # the minibatch's gradient is the row-weighted sum of its chunks'
                with ranks.synced(model, sync=i == len(chunks) - 1):  # gradients all-reduced on the last chunk
                    micro_stats, kl = _loss_backward(model, config, rollout, embeds, adv, micro, scale=scale)
                if epoch == 0 and mb == 0:  # first optimizer step after the rollout: pi_theta == pi_old
                    micro_stats.update(_selftest(micro_stats, kl))
                stats.add(len(micro), micro_stats)
                stats.pool("kl_old", kl)  # D's distribution: kl_old/mean, max, p50, p90
            grad_norms.append(torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.max_grad_norm))
            optimizer.step()
            state.update_ema(config.ema_decay)
    stats.scalar("grad_norm", torch.stack(grad_norms).float().mean())
    stats.scalar("lr", optimizer.param_groups[0]["lr"])
    if config.beta == 0 and rollout.traj.mean_ref is not None:  # monitor only: pi_old vs pi_ref at rollout
        stats.scalar("kl_ref/mean", _kl_ref_monitor(config, rollout))
    out = ranks.reduce_stats(stats, len(grad_norms)).report()  # every rank's micro-batches, in W = 1's order
    if out.get("selftest/ratio_dev", 0.0) > SELFTEST_TOLERANCE or out.get("selftest/kl_dev", 0.0) > SELFTEST_TOLERANCE:
        log.warning(
            "self-test: first-step ratio/KL deviate from 1/0 by %.2e/%.2e (numerics or a nondeterministic model)",
            out["selftest/ratio_dev"],
            out["selftest/kl_dev"],
        )
    return out


def _selftest(stats: dict[str, torch.Tensor], kl: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spec §4: on the first step after a rollout r = 1 and D = 0; max |r - 1| in float64, as Python floats had it."""
    ratio_dev = torch.maximum((stats["ratio/max"].double() - 1).abs(), (stats["ratio/min"].double() - 1).abs())
    return {"selftest/ratio_dev": ratio_dev, "selftest/kl_dev": kl.max()}


def _kl_ref_monitor(config: TrainConfig, rollout: Rollout) -> torch.Tensor:
    """Mean KL(pi_old || pi_ref) over the rows whose reference means the rollout recorded (spec §4, beta = 0)."""
    traj = rollout.traj
    n = traj.mean_ref.shape[0]
    std = _per_row(traj.std, n, traj.mean_ref)
    kl_ref = gaussian_kl(traj.mean_old[:n].flatten(0, 1), traj.mean_ref.flatten(0, 1), std, config.logprob_reduction)
    return kl_ref.mean()


def _per_row(std: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """The (S,) per-step std repeated for n samples as (n·S, 1, ..., 1), against `like` (n, S, *latent)."""
    return std.repeat(n).view(-1, *([1] * (like.ndim - 2)))


def _loss_backward(model, config: TrainConfig, rollout: Rollout, embeds, adv, rows, scale: float):
    """Recompute the policy on `rows` for all their SDE steps at once, backprop the loss; returns (stats, D)."""
    traj, sigmas = rollout.traj, rollout.sigmas
    n, S = len(rows), traj.x.shape[1]
    steps = torch.tensor(traj.step_indices)
    sigma = sigmas[steps].repeat(n).to(model.device)  # (n·S,) one forward over every (sample, step) pair
    sigma_next = sigmas[steps + 1].repeat(n).to(model.device)
    std = _per_row(traj.std, n, traj.x).to(model.device)  # (n·S, 1, ..., 1)
    x = traj.x[rows].flatten(0, 1)  # (n·S, *latent)
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
    loss, stats = compute_loss(config.loss, inputs, config)
    stats["loss/policy"] = loss.detach()
    if config.beta > 0:
        kl_ref = gaussian_kl(mean_new, traj.mean_ref[rows].flatten(0, 1), std, config.logprob_reduction)  # (n·S,)
        loss = loss + config.beta * kl_ref.mean()
        stats["kl_ref/mean"] = kl_ref.mean().detach()
    stats["loss/total"] = loss.detach()
    (loss * scale).backward()
    return stats, kl.detach()


# Stages 1 and 4 by the loss's family (LossSpec.family): the SDE loop's rollout and update, or Diffusion-NFT's.
FAMILY_STAGES = {"sde": (collect_rollout, _update), "forward": (collect_ode_rollout, nft_update)}


def _timing(t0: float, t1: float, t2: float, t3: float, images: int) -> dict[str, float]:
    return {
        "time/rollout_s": t1 - t0,
        "time/reward_s": t2 - t1,
        "time/train_s": t3 - t2,
        "throughput/images_per_s": images / max(t3 - t0, 1e-9),
    }
