"""A rollout batch: P prompts x G samples with the current weights, every SDE step recorded (spec §1, §6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.config import TrainConfig
from trainer.models.base import FlowModel, select_embeds
from trainer.sampling import Trajectory, draw_sde_steps, sample_trajectory

KL_REF_MONITOR_SAMPLES = 16  # with beta = 0, drift from the base is measured on this many rollout samples


def step_generator(seed: int, step: int, purpose: int, *index: int) -> torch.Generator:
    """Every random draw of a run comes from (seed, step, purpose): resume needs no RNG state, same seed same run.

    `index` keys a per-sample draw (e.g. the global sample index, spec §12) without changing the streams of the
    draws that have none.
    """
    # SeedSequence mixes the numbers: no (seed, step, purpose, *index) shares a stream with another.
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, step, purpose, *index]).generate_state(1)[0])
    )


def draw_prompts(config: TrainConfig, prompt_set: list[str], gen: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """P prompts from the set, each repeated G times: (prompts (B,) grouped, group ids (B,))."""
    P, G = config.prompts_per_step, config.group_size
    picks = torch.randint(len(prompt_set), (P,), generator=gen).tolist()
    return [prompt_set[i] for i in picks for _ in range(G)], torch.arange(P).repeat_interleave(G)


def draw_initial_noise(config: TrainConfig, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """(B, *shape) initial noise at s = 1, per sample or shared by each group (`shared_initial_noise`, spec §5)."""
    P, G = config.prompts_per_step, config.group_size
    # Shared initial noise makes the group's spread come from the policy's own stochastic steps (spec §5).
    noise = torch.randn((P if config.shared_initial_noise else P * G, *shape), generator=gen)
    return noise.repeat_interleave(G, dim=0) if config.shared_initial_noise else noise


@dataclass
class Rollout:
    """One rollout batch (B = P·G samples) and what training needs from it."""

    prompts: list[str]  # (B,)
    group_ids: torch.Tensor  # (B,)
    traj: Trajectory
    sigmas: torch.Tensor  # (T+1,)

    @property
    def final(self) -> torch.Tensor:
        """(B, *latent) the clean samples the rewards score; every loss family's rollout has them (trainer.nft)."""
        return self.traj.final


def collect_rollout(
    model: FlowModel,
    config: TrainConfig,
    prompt_set: list[str],
    sigmas: torch.Tensor,
    step: int,
    shard: slice | None = None,
) -> Rollout:
    """Sample P prompts x G images with the current weights, recording every SDE step (spec §1, §6).

    `shard`: the rows this rank samples (spec §12; None = all). Prompts, the SDE window and the noise are drawn for
    the whole batch whatever the shard, so a rank's samples are bit for bit those rows of the single-process batch;
    the returned trajectory holds the shard's rows, the prompts and group ids the whole batch's.
    """
    gen = step_generator(config.seed, step, purpose=1)
    P, G = config.prompts_per_step, config.group_size
    prompts, group_ids = draw_prompts(config, prompt_set, gen)  # (B,), (B,)
    sde_steps = draw_sde_steps(config.sde_window_steps, config.num_sde_steps, gen)
    shape = model.sample_shape
    noise = draw_initial_noise(config, shape, gen)  # (B, *shape)
    # SDE noise drawn on the CPU for the whole batch: same seed, same run on any device and any chunking.
    sde_noise = torch.randn((P * G, len(sde_steps), *shape), generator=gen)
    embeds = model.encode_prompts(prompts)
    ref_rows = P * G if config.beta > 0 else min(KL_REF_MONITOR_SAMPLES, P * G)
    chunk = config.micro_batch_size or P * G
    model.eval()
    parts = []
    start, stop, _ = (shard or slice(0, P * G)).indices(P * G)
    for lo in range(start, stop, chunk):
        rows = slice(lo, min(lo + chunk, stop))
        emb = select_embeds(embeds, rows)
        parts.append(
            sample_trajectory(
                lambda x, s, emb=emb: model.velocity(x, s, emb, config.guidance_scale),
                noise[rows].to(model.device),
                sigmas,
                sde_steps,
                config.sampler,
                config.effective_noise_level,
                sde_noise[rows],
                storage_dtype=model.dtype,
                logprob_reduction=config.logprob_reduction,
                reference_velocity_fn=_reference_fn(model, emb, config, ref_rows - lo) if lo < ref_rows else None,
            )
        )
    return Rollout(
        prompts=prompts, group_ids=group_ids, traj=_cat_trajectories(parts, ref_rows - start), sigmas=sigmas
    )


def _reference_fn(model: FlowModel, embeds, config: TrainConfig, rows: int):
    """pi_ref's velocity on the chunk's first `rows` samples only (the kl_ref monitor needs no more)."""
    embeds = select_embeds(embeds, slice(0, rows))

    def velocity_ref(x, s):
        with model.reference():
            return model.velocity(x[:rows], s[:rows], embeds, config.guidance_scale)

    return velocity_ref


def _cat_trajectories(parts: list[Trajectory], ref_rows: int) -> Trajectory:
    refs = [p.mean_ref for p in parts if p.mean_ref is not None]
    return Trajectory(
        x=torch.cat([p.x for p in parts]),
        x_next=torch.cat([p.x_next for p in parts]),
        logp_old=torch.cat([p.logp_old for p in parts]),
        mean_old=torch.cat([p.mean_old for p in parts]),
        std=parts[0].std,
        step_indices=parts[0].step_indices,
        final=torch.cat([p.final for p in parts]),
        mean_ref=torch.cat(refs)[:ref_rows] if refs else None,
    )
