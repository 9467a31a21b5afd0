"""Policy losses: Flow-DPPO's divergence mask and its variants (§4, §9), Flow-GRPO's ratio clip, plain policy
gradient, GRPO-Guard (§10) and Diffusion-NFT's flow-matching loss (§11). trainer.loss_registry says which the config
may name, what each reads and what its defaults mean.

Shapes throughout: logp_new, logp_old, kl_old: (B, S) for B samples and S trained steps; adv: (B,).
Each loss returns (loss, stats) with stats named as in spec §7, kept as detached 0-d tensors: the trainer converts
them once per step, at report time (trainer.stats).
"""

from __future__ import annotations

import torch

from trainer.stats import Stats


def _ratio_stats(ratio: torch.Tensor, logp_new: torch.Tensor, logp_old: torch.Tensor) -> Stats:
    log_ratio = (logp_new - logp_old).detach()
    ratio = ratio.detach()
    return {
        "ratio/mean": ratio.mean(),
        "ratio/min": ratio.min(),
        "ratio/max": ratio.max(),
        "approx_kl": (0.5 * log_ratio**2).mean(),  # spec §7: mean ½·(log r)²
    }


DPPO_MASKS = ("asymmetric", "symmetric", "first_order")  # spec §9, config key `dppo_mask`


def dppo_loss(logp_new, logp_old, advantages, kl, delta, mask="asymmetric"):
    """Flow-DPPO: no clipping; block only updates that move further away once D > delta.

    Paper Eq. 17-18 (compact mask Eq. 23); spec §4:
        r = exp(logp_theta - logp_old)
        M = 0  iff  D > delta  and  ((A > 0 and r > 1) or (A < 0 and r < 1)),  else M = 1
        L = mean_{i,t} ( -A_i · r_{i,t} · M_{i,t} )        masked terms count as zeros in the mean
    Corrective updates (moving back toward pi_old) are never blocked: the asymmetry matters (without it the mask
    collapses training). D = KL(pi_old || pi_theta) is computed without gradient and only drives the mask.

    Mask variants (spec §9), each a condition for M = 0 on top of D > delta:
        asymmetric   (default, Eq. 18):               A·(r - 1) > 0      (the rule above)
        symmetric    ("w/o asymmetry" ablation, Fig. 3): none            (every term beyond delta is dropped)
        first_order  (Appendix E, not validated):      A·(log r - D) > 0  (a step on A·r would increase D)
    The sign conditions are evaluated as comparisons, not products, so tiny A or r - 1 cannot underflow to 0.

    Args:
        logp_new: (B, S) with grad. logp_old: (B, S). advantages: (B,). kl: (B, S) D per sample and step.
        delta: threshold on D.
        mask: "asymmetric", "symmetric" or "first_order".
    """
    if mask not in DPPO_MASKS:
        raise ValueError(f"mask must be one of {DPPO_MASKS}, got {mask!r}")
    adv = advantages.unsqueeze(1)  # (B, 1), broadcast over steps
    ratio = torch.exp(logp_new - logp_old)  # (B, S)
    kl_old = kl.detach()
    if mask == "asymmetric":
        moving_away = ((adv > 0) & (ratio > 1)) | ((adv < 0) & (ratio < 1))
    elif mask == "symmetric":
        moving_away = torch.ones_like(kl_old, dtype=torch.bool)
    else:  # first_order: log r - D is the first-order change of D under a step on A·r (up to a positive factor)
        log_ratio = (logp_new - logp_old).detach()
        moving_away = ((adv > 0) & (log_ratio > kl_old)) | ((adv < 0) & (log_ratio < kl_old))
    keep = ~((kl_old > delta) & moving_away)  # (B, S) M: True = keep
    loss = (-adv * ratio * keep).mean()  # masked terms are exact zeros: no gradient flows through them
    stats = _ratio_stats(ratio, logp_new, logp_old)
    blocked = (~keep).float()
    stats.update(
        {
            "mask/fraction": blocked.mean(),
            "mask/pos_fraction": (blocked * (adv > 0)).mean(),
            "mask/neg_fraction": (blocked * (adv < 0)).mean(),
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
    stats["clip/fraction"] = ((ratio.detach() - 1.0).abs() > clip_range).float().mean()
    return loss, stats


def pg_loss(logp_new, logp_old, advantages):
    """Plain group-baseline policy gradient, an ablation (spec §4): L = mean(-A·r)."""
    ratio = torch.exp(logp_new - logp_old)  # (B, S)
    loss = (-advantages.unsqueeze(1) * ratio).mean()
    return loss, _ratio_stats(ratio, logp_new, logp_old)


def grpo_guard_loss(logp_new, logp_old, advantages, kl, std, dt, clip_range, reweight=True):
    """GRPO-Guard (arXiv 2510.22319): Flow-GRPO's clip on a normalised ratio, each step reweighted by 1/(-dt).

    Spec §10 (mean reduction), for sample i and trained step t:
        log r~_{i,t} = std_t · (log r_{i,t} + D_{i,t})   (= mean_dims z·(mu_theta - mu_old) when x' = mu_old + std_t·z)
        r~ = exp(log r~)
        L = mean_{i,t} ( w_t · max(-A_i·r~, -A_i·clip(r~, 1-eps, 1+eps)) ),   w_t = 1/(-dt_t) if reweight else 1
    Unlike dppo, D keeps its gradient: it cancels the -D inside log r, which is what centres r~ (official code).

    Args:
        logp_new: (B, S) with grad. logp_old: (B, S). advantages: (B,). kl: (B, S) D, with grad.
        std: (S,) transition std of each trained step. dt: (S,) sigma_{t+1} - sigma_t (< 0).
        clip_range: eps (2e-6 for this loss). reweight: apply w_t (Flow-Factory omits it).
    """
    adv = advantages.unsqueeze(1)  # (B, 1)
    log_ratio = std * (logp_new - logp_old + kl)  # (B, S) log r~; std (S,) broadcasts over samples
    ratio = torch.exp(log_ratio)  # (B, S) r~
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    weight = 1.0 / -dt if reweight else torch.ones_like(dt)  # (S,) w_t: per-step gradient reweight
    loss = (weight * torch.maximum(unclipped, clipped)).mean()
    stats = _ratio_stats(ratio, log_ratio, torch.zeros_like(log_ratio))  # ratio/* and approx_kl of r~
    stats["clip/fraction"] = ((ratio.detach() - 1.0).abs() > clip_range).float().mean()
    return loss, stats


NFT_WEIGHT_FLOOR = 1e-5  # spec §11: w± floor, as in the official code


def nft_loss(v, v_old, x_s, x0, s, advantages, beta, adv_clip=5.0):
    """Diffusion-NFT (arXiv 2509.16117): a flow-matching loss toward implicit positive / negative policies.

    Spec §11, per sample i (no reference-KL term: the loop adds beta_kl · mean (v - v_ref)²):
        v+ = beta·v + (1 - beta)·v_old;   v- = (1 + beta)·v_old - beta·v
        x0± = x_s - s·v±;   w± = stopgrad(mean_dims |x0± - x0|) floored at 1e-5;   l± = mean_dims (x0± - x0)² / w±
        r = clip(0.5 + 0.5·clip(A, -c, c)/c, 0, 1)          (advantage mapped to an optimality probability)
        L = c · mean_i ( r_i·l+_i + (1 - r_i)·l-_i ) / beta  (c = adv_clip: the official code scales by it)

    Args:
        v: (B, ...) v_theta(x_s, s), with grad. v_old: (B, ...) v_theta_old(x_s, s), no grad.
        x_s: (B, ...) noised samples (1 - s)·x0 + s·eps. x0: (B, ...) clean rollout samples. s: (B,) noise levels.
        advantages: (B,). beta: the policy mix (1.0). adv_clip: c (5.0).
    """
    v, v_old, x_s, x0 = v.float(), v_old.detach().float(), x_s.float(), x0.float()  # float32 math (spec §2)
    dims = tuple(range(1, v.ndim))  # every latent dim: 4-D images and 5-D video alike
    s = s.float().reshape(-1, *([1] * len(dims)))  # (B, 1, ..., 1)
    v_pos = beta * v + (1 - beta) * v_old
    v_neg = (1 + beta) * v_old - beta * v
    err_pos = x_s - s * v_pos - x0  # x0+ - x0
    err_neg = x_s - s * v_neg - x0  # x0- - x0
    w_pos = err_pos.detach().abs().mean(dims).clamp_min(NFT_WEIGHT_FLOOR)  # (B,) adaptive weights, no gradient
    w_neg = err_neg.detach().abs().mean(dims).clamp_min(NFT_WEIGHT_FLOOR)
    l_pos = (err_pos**2).mean(dims) / w_pos  # (B,)
    l_neg = (err_neg**2).mean(dims) / w_neg
    r = (0.5 + 0.5 * advantages.float().clamp(-adv_clip, adv_clip) / adv_clip).clamp(0.0, 1.0)  # (B,)
    loss = adv_clip * (r * l_pos + (1 - r) * l_neg).mean() / beta
    stats = {"nft/r_mean": r.mean(), "nft/w_pos_mean": w_pos.mean(), "nft/w_neg_mean": w_neg.mean()}
    return loss, stats
