"""Group-relative advantages for one or several rewards (spec §5)."""

from __future__ import annotations

import torch

_EPS = 1e-8  # spec §5: guards groups whose rewards are all equal


def _group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample mean, std (population) and flatness of its group. values, group_ids: (B,) -> three (B,) tensors.

    A group is flat when its max equals its min: float rounding gives equal values a std of ~1e-8, not 0.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    count = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, inverse, torch.ones_like(values))
    total = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, inverse, values)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    std = torch.sqrt(sq / count)
    high = torch.full((n_groups,), -torch.inf, dtype=values.dtype).scatter_reduce(0, inverse, values, "amax")
    low = torch.full((n_groups,), torch.inf, dtype=values.dtype).scatter_reduce(0, inverse, values, "amin")
    return mean[inverse], std[inverse], (high == low)[inverse]


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, global_std: bool = True) -> torch.Tensor:
    """A = (R - mean_group) / (std + 1e-8) (spec §5); samples of a zero-std group get A = 0.

    Args:
        rewards: (B,) one scalar reward per sample.
        group_ids: (B,) integer id of each sample's prompt group (G samples per prompt).
        global_std: divide by the std over the whole rollout batch (default) instead of the group's std.

    Returns:
        (B,) float32 advantages.
    """
    rewards = rewards.float().cpu()
    group_ids = group_ids.cpu()
    mean, std_group, flat = _group_stats(rewards, group_ids)
    std = rewards.std(unbiased=False).expand_as(rewards) if global_std else std_group
    adv = (rewards - mean) / (std + _EPS)
    return torch.where(flat, torch.zeros_like(adv), adv)


def gdpo_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """GDPO for several rewards (spec §5): normalise each reward within its group, weight, sum, standardise.

    A_i = standardise_batch( sum_k w_k · (R_ik - mean_group(R_k)) / (std_group(R_k) + 1e-8) )

    Args:
        rewards: (B, K) one column per trained reward. weights: (K,). group_ids: (B,).

    Returns:
        (B,) float32; samples whose group has zero std in every reward get A = 0.
    """
    rewards = rewards.float().cpu()
    group_ids = group_ids.cpu()
    combined = torch.zeros(rewards.shape[0])
    any_spread = torch.zeros(rewards.shape[0], dtype=torch.bool)
    for k in range(rewards.shape[1]):
        mean, std, flat = _group_stats(rewards[:, k], group_ids)
        normalised = (rewards[:, k] - mean) / (std + _EPS)
        combined += weights[k] * torch.where(flat, torch.zeros_like(normalised), normalised)
        any_spread |= ~flat
    adv = (combined - combined.mean()) / (combined.std(unbiased=False) + _EPS)
    return torch.where(any_spread, adv, torch.zeros_like(adv))


def zero_std_fraction(rewards: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Share of samples whose whole group has zero reward std (spec §5; reported as `zero_std_fraction`).

    rewards: (B,) or (B, K); with several rewards a group counts only when it is flat in all of them.
    """
    columns = rewards.float().cpu().reshape(rewards.shape[0], -1)
    flat = torch.ones(columns.shape[0], dtype=torch.bool)
    for k in range(columns.shape[1]):
        flat &= _group_stats(columns[:, k], group_ids.cpu())[2]
    return flat.float().mean().item()
