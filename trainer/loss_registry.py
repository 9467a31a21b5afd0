"""The loss registry: each selectable loss (trainer.losses) with the inputs it reads, its knobs and what its defaults
mean, and the one call the trainer makes.

Adding a loss: one function in trainer/losses.py, one `LossSpec` in `LOSSES`, tests. The trainer builds one
`LossInputs` (an SDE-family loss) or `FlowMatchInputs` (a forward-family loss) per micro-batch and calls
`compute_loss`; the config's `loss` choices, `advantage_clip="auto"` and `clip_range=None` come from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from trainer.losses import clip_loss, dppo_loss, grpo_guard_loss, nft_loss, pg_loss
from trainer.stats import Stats


@dataclass(frozen=True)
class LossInputs:
    """The tensors a training step has for its B rows and S trained (SDE) steps; a loss names the ones it reads."""

    logp_new: torch.Tensor  # (B, S) log pi_theta(x' | x), with gradient
    logp_old: torch.Tensor  # (B, S) log pi_old(x' | x) recorded at rollout
    advantages: torch.Tensor  # (B,) A_i, broadcast over steps
    kl: torch.Tensor  # (B, S) D = KL(pi_old || pi_theta) (spec §3); with gradient only for a `kl_grad` entry
    std: torch.Tensor  # (S,) transition std of each trained step, shared by old and new policy
    dt: torch.Tensor  # (S,) sigma_{t+1} - sigma_t (< 0) of each trained step


@dataclass(frozen=True)
class FlowMatchInputs:
    """The tensors of a forward-process (Diffusion-NFT) step for B rows at one noise level each (spec §11)."""

    v: torch.Tensor  # (B, ...) v_theta(x_s, s), with gradient
    v_old: torch.Tensor  # (B, ...) v_theta_old(x_s, s), no gradient
    x_s: torch.Tensor  # (B, ...) (1 - s)·x0 + s·eps, eps fresh
    x0: torch.Tensor  # (B, ...) the rollout's clean samples
    s: torch.Tensor  # (B,) noise levels, from the sampling grid
    advantages: torch.Tensor  # (B,) A_i


LossFamily = Literal["sde", "forward"]  # log-prob losses on SDE rollouts | flow-matching losses on ODE rollouts
FAMILY_INPUTS: dict[str, type] = {"sde": LossInputs, "forward": FlowMatchInputs}
LOSS_INPUTS = tuple(f.name for f in fields(LossInputs))


@dataclass(frozen=True)
class LossSpec:
    """One selectable loss and the facts the rest of the platform needs about it.

    Attributes:
        name: the config's `loss` value.
        fn: the loss function; called as fn(*inputs, **knobs) and returns (loss, stats).
        inputs: the fields of the family's inputs record (`LossInputs` or `FlowMatchInputs`) passed positionally.
        knobs: the function's keyword parameter -> the TrainConfig attribute it takes (a field or a property), e.g.
            {"mask": "dppo_mask"} or {"clip_range": "effective_clip_range"}.
        advantage_clip: what `advantage_clip="auto"` means for this loss (None = no clip; spec §4).
        trust_region_metric: the stat that measures its trust region (dashboard, summaries, CLI), or None.
        kl_grad: the trainer computes D with gradient (e.g. GRPO-Guard's ratio normalisation, spec §10).
        clip_range: what `clip_range=None` means for this loss (None: it has no clip range).
        family: "sde" (rollouts with SDE steps, log-probs, D: spec §4) or "forward" (ODE rollouts sampled by the old
            weights and a loss on freshly noised copies of x0: spec §11); the loop dispatches rollout and update on it.
    """

    name: str
    fn: Callable[..., tuple[torch.Tensor, Stats]]
    inputs: tuple[str, ...]
    knobs: Mapping[str, str] = field(default_factory=dict)
    advantage_clip: float | None = None
    trust_region_metric: str | None = None
    kl_grad: bool = False
    clip_range: float | None = None
    family: LossFamily = "sde"

    def __post_init__(self) -> None:
        if self.family not in FAMILY_INPUTS:
            raise ValueError(f"loss {self.name!r}: family must be one of {tuple(FAMILY_INPUTS)}, got {self.family!r}")
        allowed = tuple(f.name for f in fields(FAMILY_INPUTS[self.family]))
        unknown = [name for name in self.inputs if name not in allowed]
        if unknown:
            kind = FAMILY_INPUTS[self.family].__name__
            raise ValueError(f"loss {self.name!r}: inputs {unknown} are not {kind} fields {allowed}")


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "dppo",
            dppo_loss,
            inputs=("logp_new", "logp_old", "advantages", "kl"),
            knobs={"delta": "delta", "mask": "dppo_mask"},
            trust_region_metric="mask/fraction",
        ),
        LossSpec(
            "clip",
            clip_loss,
            inputs=("logp_new", "logp_old", "advantages"),
            knobs={"clip_range": "effective_clip_range"},
            advantage_clip=5.0,  # spec §4: as in Flow-GRPO's reference
            trust_region_metric="clip/fraction",
            clip_range=1e-4,  # spec §4: with mean reduction
        ),
        LossSpec("none", pg_loss, inputs=("logp_new", "logp_old", "advantages")),
        LossSpec(
            "grpo_guard",
            grpo_guard_loss,
            inputs=("logp_new", "logp_old", "advantages", "kl", "std", "dt"),
            knobs={"clip_range": "effective_clip_range", "reweight": "guard_reweight"},
            advantage_clip=5.0,  # spec §10: the clip loss of §4 underneath, Flow-GRPO's advantage clip
            trust_region_metric="clip/fraction",  # on r~ (spec §10)
            kl_grad=True,  # D cancels the -D inside log r: what centres r~ (official code)
            clip_range=2e-6,  # spec §10: the official OCR/GenEval configs
        ),
        LossSpec(
            "nft",
            nft_loss,
            inputs=("v", "v_old", "x_s", "x0", "s", "advantages"),
            knobs={"beta": "nft_beta", "adv_clip": "effective_advantage_clip"},
            advantage_clip=5.0,  # spec §11: r = clip(0.5 + 0.5·clip(A, -5, 5)/5, 0, 1)
            family="forward",
        ),
    )
}


def compute_loss(name: str, inputs: LossInputs | FlowMatchInputs, config: Any) -> tuple[torch.Tensor, Stats]:
    """The registered loss `name` on `inputs`, its knobs read from `config` (a TrainConfig)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {name!r}")
    spec = LOSSES[name]
    expected = FAMILY_INPUTS[spec.family]
    if not isinstance(inputs, expected):
        raise ValueError(f"loss {name!r} reads {expected.__name__}, got {type(inputs).__name__}")
    args = [getattr(inputs, key) for key in spec.inputs]
    return spec.fn(*args, **{param: getattr(config, attr) for param, attr in spec.knobs.items()})


def trust_region_metrics() -> dict[str, tuple[str, ...]]:
    """Each trust-region metric and the losses that report it, in registry order.

    Today {"mask/fraction": ("dppo",), "clip/fraction": ("clip", "grpo_guard")}: what the dashboard, summaries and CLI
    show (nft has none: its old weights trail theta by a schedule, nothing is masked or clipped).
    """
    out: dict[str, tuple[str, ...]] = {}
    for spec in LOSSES.values():
        if spec.trust_region_metric is not None:
            out[spec.trust_region_metric] = (*out.get(spec.trust_region_metric, ()), spec.name)
    return out
