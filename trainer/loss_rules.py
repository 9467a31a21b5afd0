"""Which TrainConfig combinations each loss refuses (spec §9-11): a knob of another method, or one the loss ignores.

Only values set away from their defaults are refused, so every stored config of an existing run still validates
and means what it meant. Each message names the field, its value and why (house style: errors teach).
"""

from __future__ import annotations

from typing import Any

from trainer.loss_registry import LOSSES

# The knobs only one loss reads: set away from its default with another loss, the user expects an effect there is none.
OWN_KNOBS = {
    "dppo_mask": "dppo",  # spec §9
    "guard_reweight": "grpo_guard",  # spec §10
    "nft_beta": "nft",  # spec §11
    "nft_timesteps": "nft",
}
# What the forward (Diffusion-NFT) loop never reads: no SDE steps, one pass per rollout (spec §11, official code).
FORWARD_IGNORES = ("sde_steps", "sde_window", "noise_level", "delta", "inner_epochs")


def check_loss_fields(config: Any) -> None:
    """Raise ValueError when `config` (a TrainConfig) combines its loss with knobs that make no sense for it."""
    loss, spec = config.loss, LOSSES[config.loss]
    fields = type(config).model_fields

    def away(name: str) -> bool:
        return getattr(config, name) != fields[name].default

    for name, owner in OWN_KNOBS.items():
        if loss != owner and away(name):
            raise ValueError(f"{name}={getattr(config, name)!r} applies to loss={owner!r} only, got loss={loss!r}")
    if loss == "grpo_guard":
        _check_guard(config)
    if spec.family == "forward":
        _check_forward(config, [name for name in FORWARD_IGNORES if away(name)])


def _check_guard(config: Any) -> None:
    if config.sampler != "flow_sde":
        raise ValueError(
            f"loss='grpo_guard' needs sampler='flow_sde', got sampler={config.sampler!r}: its ratio normalisation "
            "(log r~ = std·(log r + D)) is derived for the Flow-SDE transition (spec §10)"
        )
    if config.logprob_reduction != "mean":
        raise ValueError(
            f"loss='grpo_guard' needs logprob_reduction='mean', got {config.logprob_reduction!r}: with 'sum' the "
            "normalised log-ratio becomes the sum over latent dims of z·(mu_theta - mu_old), latent-size times "
            "larger, "
            "and clip_range (eps = 2e-6) means nothing (spec §10)"
        )


def _check_forward(config: Any, ignored: list[str]) -> None:
    loss = config.loss
    if ignored:
        values = ", ".join(f"{name}={getattr(config, name)!r}" for name in ignored)
        raise ValueError(
            f"loss={loss!r} ignores {values}: its rollouts are ODE samples (no SDE steps) and each rollout is "
            "trained on once (spec §11); leave them at their defaults"
        )
    if config.sampler != "flow_sde":
        raise ValueError(
            f"loss={loss!r} samples its rollouts with the ODE sampler: sampler={config.sampler!r} would not be used "
            "(spec §11); leave sampler='flow_sde' (it only sets the kl_ref monitor's transition)"
        )
    if config.shared_initial_noise:
        raise ValueError(
            f"loss={loss!r} with shared_initial_noise=True gives every group G identical samples: its rollouts are "
            "deterministic ODE samples, so every reward spread and advantage would be 0 (spec §5, §11)"
        )
    if config.nft_timesteps > config.num_steps:
        raise ValueError(
            f"nft_timesteps={config.nft_timesteps} must be at most num_steps={config.num_steps}: the trained noise "
            "levels are drawn from the sampling grid without replacement (spec §11)"
        )
    if config.effective_advantage_clip is None:
        raise ValueError(
            f"loss={loss!r} maps A to an optimality probability clip(0.5 + 0.5·clip(A, -c, c)/c, 0, 1): "
            "advantage_clip=None leaves no c; use 'auto' (5, spec §11) or a number"
        )
    if getattr(config, "num_processes", 1) > 1:
        raise ValueError(
            f"loss={loss!r} runs on one process for now: num_processes={config.num_processes} would need the "
            "forward loop's rollout and update sharded across ranks (spec §12), which is not implemented yet"
        )
    if config.model != "builtin" and config.effective_lora_rank == 0:
        raise ValueError(
            f"loss={loss!r} with lora_rank=0 on model={config.model!r} would keep a second full copy of the "
            "transformer (theta_old) in memory next to the trained weights and their optimizer state; use LoRA "
            "(lora_rank > 0), where theta_old is a second adapter"
        )
