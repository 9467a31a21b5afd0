"""Policy losses: Flow-DPPO's divergence mask, Flow-GRPO's ratio clip, and plain policy gradient (spec §4).

Shapes throughout: logp_new, logp_old, kl_old: (B, S) for B samples and S trained steps; adv: (B,).
Each loss returns (loss, stats) with stats named as in spec §7.
"""

from __future__ import annotations

import torch


def _ratio_stats(ratio: torch.Tensor, logp_new: torch.Tensor, logp_old: torch.Tensor) -> dict[str, float]:
    log_ratio = (logp_new - logp_old).detach()
    return {
        "ratio/mean": ratio.detach().mean().item(),
        "ratio/min": ratio.detach().min().item(),
        "ratio/max": ratio.detach().max().item(),
        "approx_kl": (0.5 * log_ratio**2).mean().item(),  # spec §7: mean ½·(log r)²
    }


def dppo_loss(logp_new, logp_old, advantages, kl, delta):
    """Flow-DPPO: no clipping; block only updates that move further away once D > delta.

    Paper Eq. 17-18 (compact mask Eq. 23); spec §4:
        r = exp(logp_theta - logp_old)
        M = 0  iff  D > delta  and  ((A > 0 and r > 1) or (A < 0 and r < 1)),  else M = 1
        L = mean_{i,t} ( -A_i · r_{i,t} · M_{i,t} )        masked terms count as zeros in the mean
    Corrective updates (moving back toward pi_old) are never blocked: the asymmetry matters (without it the mask
    collapses training). D = KL(pi_old || pi_theta) is computed without gradient and only drives the mask.

    Args:
        logp_new: (B, S) with grad. logp_old: (B, S). advantages: (B,). kl: (B, S) D per sample and step.
        delta: threshold on D.
    """
    adv = advantages.unsqueeze(1)  # (B, 1), broadcast over steps
    ratio = torch.exp(logp_new - logp_old)  # (B, S)
    kl_old = kl.detach()
    moving_away = ((adv > 0) & (ratio > 1)) | ((adv < 0) & (ratio < 1))
    mask = ~((kl_old > delta) & moving_away)  # (B, S) True = keep
    loss = (-adv * ratio * mask).mean()  # masked terms are exact zeros: no gradient flows through them
    stats = _ratio_stats(ratio, logp_new, logp_old)
    blocked = (~mask).float()
    stats.update(
        {
            "mask/fraction": blocked.mean().item(),
            "mask/pos_fraction": (blocked * (adv > 0)).mean().item(),
            "mask/neg_fraction": (blocked * (adv < 0)).mean().item(),
        }
    )
    return loss, stats


def clip_loss(logp_new, logp_old, advantages, clip_range):
    """Flow-GRPO / PPO ratio clipping (spec §4): L = mean( max(-A·r, -A·clip(r, 1-eps, 1+eps)) ).

    Args:
        logp_new: (B, S) with grad. logp_old: (B, S). advantages: (B,). clip_range: eps (1e-4 with mean reduction).
    """
    adv = advantages.unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logp_new - logp_old)  # (B, S)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = _ratio_stats(ratio, logp_new, logp_old)
    stats["clip/fraction"] = ((ratio - 1.0).abs() > clip_range).float().mean().item()
    return loss, stats


def pg_loss(logp_new, logp_old, advantages):
    """Plain group-baseline policy gradient, an ablation (spec §4): L = mean(-A·r)."""
    ratio = torch.exp(logp_new - logp_old)  # (B, S)
    loss = (-advantages.unsqueeze(1) * ratio).mean()
    return loss, _ratio_stats(ratio, logp_new, logp_old)


# One call signature for the trainer: (logp_new, logp_old, adv, kl, delta, clip_range) -> (loss, stats).
LOSSES = {
    "dppo": lambda logp_new, logp_old, adv, kl, delta, clip_range: dppo_loss(logp_new, logp_old, adv, kl, delta),
    "clip": lambda logp_new, logp_old, adv, kl, delta, clip_range: clip_loss(logp_new, logp_old, adv, clip_range),
    "none": lambda logp_new, logp_old, adv, kl, delta, clip_range: pg_loss(logp_new, logp_old, adv),
}
