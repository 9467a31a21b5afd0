"""Exact KL divergence between two per-step Gaussian policies that share their std (spec §3; paper Eq. 14-16)."""

from __future__ import annotations

import torch

from trainer.sampling import reduce_latent


def gaussian_kl(mean_old: torch.Tensor, mean_new: torch.Tensor, std: torch.Tensor, reduction: str = "mean"):
    """KL(pi_old || pi_theta) = ||mean_old - mean_theta||² / (2·std²), exact for equal isotropic stds.

    The std of the per-step policy does not depend on theta, so the closed form is exact. Reduced over the
    latent dims like the log-prob (spec §3): "mean" divides the paper's KL by the latent size.

    Args:
        mean_old, mean_new: (B, ...) policy means; cast to float32.
        std: broadcastable to the means, > 0.
        reduction: "mean" or "sum".

    Returns:
        (B,) float32.
    """
    per_elem = (mean_old.float() - mean_new.float()) ** 2 / (2 * std.float() ** 2)
    return reduce_latent(per_elem, reduction)
