"""Diffusion-NFT's half of the loop (spec §11): ODE rollouts sampled by the old weights, the forward-process update on
freshly noised copies of x0, and the old weights' pull toward theta after each rollout.

Rewards, advantages, evaluation, reports and checkpoints are the shared loop's (trainer.train dispatches stages 1 and
4 on the loss family). Every random draw comes from (seed, step, purpose) and, per sample, its batch index: the
same run on any device, chunking or resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config import TrainConfig
from trainer.divergence import gaussian_kl
from trainer.loss_registry import FlowMatchInputs, compute_loss
from trainer.models.base import FlowModel, select_embeds
from trainer.old_weights import nft_old_decay, pull_toward
from trainer.rollout import KL_REF_MONITOR_SAMPLES, draw_initial_noise, draw_prompts, step_generator
from trainer.sampling import sample_ode, transition
from trainer.state import TrainState
from trainer.stats import StepStats

ROLLOUT, SHUFFLE, LEVELS, NOISE = 1, 100, 200, 201  # purposes of the draws (the SDE loop's rollout and shuffle alike)


@dataclass
class OdeRollout:
    """One Diffusion-NFT rollout batch (B = P·G): only the clean samples are kept (spec §11)."""

    prompts: list[str]  # (B,) grouped
    group_ids: torch.Tensor  # (B,)
    final: torch.Tensor  # (B, *latent) x0 in the storage dtype; the initial noise can be redrawn from (seed, step)
    sigmas: torch.Tensor  # (T+1,)


@torch.no_grad()
def collect_ode_rollout(
    model: FlowModel,
    config: TrainConfig,
    prompt_set: list[str],
    sigmas: torch.Tensor,
    step: int,
    shard: slice | None = None,
) -> OdeRollout:
    """P prompts x G images from pi_old with the deterministic ODE sampler at num_steps, CFG guidance_scale.

    `shard` is the SDE loop's rank slice (spec §12); nft runs on one process (config validation), so it is the batch.
    """
    gen = step_generator(config.seed, step, purpose=ROLLOUT)
    P, G = config.prompts_per_step, config.group_size
    prompts, group_ids = draw_prompts(config, prompt_set, gen)  # (B,), (B,)
    noise = draw_initial_noise(config, model.sample_shape, gen)  # (B, *latent)
    embeds = model.encode_prompts(prompts)
    chunk = config.micro_batch_size or P * G
    model.eval()
    finals = []
    with model.old_policy():  # theta_old samples the rollouts (spec §11)
        for lo in range(0, P * G, chunk):
            emb = select_embeds(embeds, slice(lo, lo + chunk))
            x = noise[lo : lo + chunk].to(model.device)
            velocity = lambda x, s, emb=emb: model.velocity(x, s, emb, config.guidance_scale)  # noqa: E731
            finals.append(sample_ode(velocity, x, sigmas, model.dtype))
    return OdeRollout(prompts, group_ids, torch.cat(finals), sigmas)


def nft_update(
    state: TrainState, config: TrainConfig, rollout: OdeRollout, adv: torch.Tensor, ranks: object = None
) -> dict[str, float]:
    """One pass of minibatches over the rollout (the official code's single pass), then theta_old's pull (spec §11).

    Each sample is trained at `nft_timesteps` noise levels drawn from the grid sigmas[0:T] without replacement; the
    minibatch's gradient is the mean over its rows and levels, one optimizer step per minibatch. `ranks` (the SDE
    loop's, spec §12) is unused: nft runs on one process.
    """
    model, optimizer = state.model, state.optimizer
    model.train()
    embeds = model.encode_prompts(rollout.prompts)
    adv = adv.to(model.device)
    B, J = len(adv), config.nft_timesteps
    levels = torch.stack(
        [
            torch.randperm(config.num_steps, generator=step_generator(config.seed, state.step, LEVELS, i))[:J]
            for i in range(B)
        ]
    )  # (B, J) grid indices, shuffled per sample
    stats, grad_norms, kl_ref = StepStats(), [], []
    order = torch.randperm(B, generator=step_generator(config.seed, state.step, purpose=SHUFFLE))
    for mb, rows in enumerate(order.split(config.minibatch_size)):
        optimizer.zero_grad(set_to_none=True)
        for n, micro in enumerate(rows.split(config.micro_batch_size or len(rows))):
            for j in range(J):
                scale = len(micro) / len(rows) / J  # the minibatch's loss is the mean over its rows and levels
                monitor = mb == 0 and n == 0  # beta = 0: kl_ref on a few rows of one chunk, as the SDE loop's monitor
                micro_stats, kl = _flow_match_backward(
                    model, config, rollout, embeds, adv, micro, levels[micro, j], (state.step, j), scale, monitor
                )
                stats.add(len(micro), micro_stats)
                kl_ref.append(kl)
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.max_grad_norm))
        optimizer.step()
        state.update_ema(config.ema_decay)
    # theta_old <- d·theta_old + (1 - d)·theta, k = optimizer steps so far: derived from the step, so resume agrees
    k = state.step * config.num_minibatches
    pull_toward(model.old_parameters(), model.trainable_parameters(), nft_old_decay(k))
    stats.scalar("grad_norm", torch.stack(grad_norms).float().mean())
    stats.scalar("lr", optimizer.param_groups[0]["lr"])
    if kl_ref := [kl for kl in kl_ref if kl is not None and kl.numel()]:
        stats.scalar("kl_ref/mean", torch.cat(kl_ref).mean())
    return stats.report()


def _flow_match_backward(model, config, rollout, embeds, adv, rows, grid, key, scale: float, monitor: bool):
    """nft_loss (+ beta·mean (v - v_ref)²) of `rows` at grid indices `grid` (n,), backpropagated.

    Returns (stats, kl_ref): kl_ref (m,) per row whose level lies in the SDE window, None when v_ref was not needed.
    """
    step, j = key
    x0 = rollout.final[rows].to(model.device, torch.float32)  # (n, *latent)
    shape = x0.shape[1:]
    eps = torch.stack(
        [torch.randn(shape, generator=step_generator(config.seed, step, NOISE, int(i), j)) for i in rows]
    )
    s = rollout.sigmas[grid].to(model.device)  # (n,)
    s_ = s.reshape(-1, *([1] * len(shape)))
    x_s = (1 - s_) * x0 + s_ * eps.to(model.device)  # forward process, fresh eps (spec §11)
    emb = select_embeds(embeds, rows.to(model.device))
    with torch.no_grad():  # v_old and v_ref first: switching adapters never happens under a graph being built
        with model.old_policy():
            v_old = model.velocity(x_s, s, emb, config.guidance_scale)
        # beta > 0: the penalty needs v_ref on every row; beta = 0: the drift monitor reads a few rows only
        m = len(rows) if config.beta > 0 else min(KL_REF_MONITOR_SAMPLES, len(rows)) if monitor else 0
        v_ref = None
        if m:
            with model.reference():
                v_ref = model.velocity(
                    x_s[:m], s[:m], select_embeds(embeds, rows[:m].to(model.device)), config.guidance_scale
                )
    v = model.velocity(x_s, s, emb, config.guidance_scale)
    inputs = FlowMatchInputs(v=v, v_old=v_old, x_s=x_s, x0=x0, s=s, advantages=adv[rows.to(adv.device)])
    loss, stats = compute_loss(config.loss, inputs, config)
    stats["loss/policy"] = loss.detach()
    kl_ref = None
    if v_ref is not None:
        if config.beta > 0:  # spec §11: + beta_kl · mean (v - v_ref)²
            loss = loss + config.beta * ((v - v_ref) ** 2).mean()
        kl_ref = _kl_ref(config, v[:m].detach(), v_ref, x_s[:m], grid[:m], rollout.sigmas)
    stats["loss/total"] = loss.detach()
    (loss * scale).backward()
    return stats, kl_ref


def _kl_ref(config: TrainConfig, v, v_ref, x_s, grid, sigmas) -> torch.Tensor:
    """KL(pi_theta || pi_ref) (m,) of the flow_sde transitions from (x_s, s) to the next grid level, built from v and
    v_ref (spec §2-3, the run's noise level and reduction), for the rows whose level lies in the SDE window: the
    quantity and the steps the SDE methods report as kl_ref/mean, here at forward-noised states (spec §11)."""
    window = torch.tensor(list(config.sde_window_steps))
    keep = torch.isin(grid, window).to(x_s.device)  # (n,) the low-noise levels' tiny std would dominate otherwise
    s, s_next = sigmas[grid].to(x_s.device), sigmas[grid + 1].to(x_s.device)
    args = (x_s, s, s_next, config.effective_noise_level, sigmas[1])
    mean, std = transition(config.sampler, v, *args)
    mean_ref, _ = transition(config.sampler, v_ref, *args)
    return gaussian_kl(mean, mean_ref, std, config.logprob_reduction)[keep]
