"""Diffusion-NFT's old weights theta_old: their decay schedule and their pull toward the trained weights (spec §11).

theta_old samples the rollouts and gives v_old in `trainer.losses.nft_loss`; after each rollout's optimizer steps
it moves toward theta. This is a parameter update, not a loss, so it lives apart from the losses.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

NFT_DECAY_RATE = 0.001  # spec §11: d grows by 0.001 per optimizer step (official "decay type 1")
NFT_DECAY_MAX = 0.5  # spec §11: ... and is held at 0.5 from step 500 on


def nft_old_decay(step: int, rate: float = NFT_DECAY_RATE, max_decay: float = NFT_DECAY_MAX) -> float:
    """d = min(rate·k, max_decay), k = optimizer steps so far (spec §11: min(0.001·k, 0.5)).

    d = 0 (k = 0) makes theta_old a copy of theta; d = 0.5 averages the two.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0 (optimizer steps so far), got {step}")
    return min(rate * step, max_decay)


@torch.no_grad()
def pull_toward(old_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """In place, pairwise: theta_old <- d·theta_old + (1 - d)·theta (spec §11).

    Args:
        old_params: theta_old's tensors (a second weight set for the builtin model, or the "old" LoRA adapter).
        params: theta's tensors, same order and shapes; read only. Cast to theta_old's dtype.
        decay: d in [0, 1], usually `nft_old_decay(k)`.
    """
    old_params, params = list(old_params), list(params)
    if len(old_params) != len(params):
        raise ValueError(f"old_params has {len(old_params)} tensors, params {len(params)}: they must pair up")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for old, new in zip(old_params, params, strict=True):
        if old.shape != new.shape:
            raise ValueError(f"old and new weights differ in shape: {tuple(old.shape)} vs {tuple(new.shape)}")
        # d·old + (1 - d)·new literally (not lerp): d = 0 gives theta exactly, as "theta_old starts equal to theta".
        old.mul_(decay).add_(new.to(old.dtype), alpha=1.0 - decay)
