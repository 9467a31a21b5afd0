"""The model families, one table row each (spec §6: LoRA rank/alpha, evaluation guidance): what the config validates
against and how `load_model` builds a family's FlowModel. Imports no diffusers: a loader is imported when it runs.

Adding a family: one module under trainer/models/ (a FlowModel and its loader) and one `FamilySpec` in `FAMILIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trainer.models.base import FlowModel

# The reference target modules of SD3-architecture transformers (the built-in model is one too): Flow-GRPO's SD3.5
# layout, the joint attention of every MMDiT block, image and text streams. SD3.5-M's extra self-attention (`attn2`)
# and the MLPs stay frozen, as in the reference.
SD3_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
# diffusers' examples/dreambooth/train_dreambooth_lora_flux.py default layout: attention of the double-stream
# blocks (image and text, SD3's names), the single-stream blocks' attention (same `attn.to_*` names) and both MLPs.
FLUX_LORA_TARGETS = SD3_LORA_TARGETS + (
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)


@dataclass(frozen=True)
class FamilySpec:
    """One model family and its defaults.

    Attributes:
        name: the config's `model` value.
        loader: "module:attribute" of a `(config, device, **options) -> FlowModel`, imported when a model is built.
        lora_targets: default LoRA target modules (config `lora_target_modules=None`).
        lora_rank: default LoRA rank (config `lora_rank=None`); 0 = full fine-tuning. Alpha defaults to 2 x rank.
        eval_guidance: default CFG scale at evaluation (config `eval_guidance_scale=None`).
        needs_model_path: the weights come from `model_path` (no shipped default).
        sample_shape: the latent (C, H, W) of one sample, as `FlowModel.sample_shape` computes it from the weights.
        resolutions: (smallest, largest) image side in pixels the family can generate (config `resolution`).
        max_rollout_batch: the most samples one rollout may hold (prompts_per_step x group_size): its trajectories
            and decoded images stay in memory for the whole step.
    """

    name: str
    loader: str
    lora_targets: tuple[str, ...]
    lora_rank: int
    eval_guidance: float
    needs_model_path: bool
    sample_shape: str
    resolutions: tuple[int, int] = (16, 2048)
    max_rollout_batch: int = 1024

    def load(self, config: Any, device: str | torch.device = "cpu", **options: Any) -> FlowModel:
        """The family's FlowModel for a TrainConfig on `device` (options: the loader's keyword arguments)."""
        module_name, _, attribute = self.loader.partition(":")
        loader: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            loader = getattr(loader, part)
        return loader(config, device, **options)


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            "builtin",
            "trainer.models.builtin:load_builtin",
            SD3_LORA_TARGETS,
            lora_rank=0,  # the 0.44M-parameter builtin trains fully
            eval_guidance=1.0,  # trained without CFG
            needs_model_path=False,  # None = the shipped base
            sample_shape="(3, 32, 32): pixels, no VAE",
            resolutions=(32, 32),  # the shipped base and `flowdppo pretrain-base` generate 32x32 only
            max_rollout_batch=4096,  # 32x32 pixels: 4096 samples x 10 steps of trajectory is ~0.5 GB
        ),
        FamilySpec(
            "sd3",
            "trainer.models.sd3:SD3Model.load",
            SD3_LORA_TARGETS,
            lora_rank=32,  # spec §6: r=32, alpha=64 for SD3-class models
            eval_guidance=4.5,  # SD3.5's usual sampling scale
            needs_model_path=True,
            sample_shape="(16, H/8, W/8): transformer in_channels, VAE factor 8",
            resolutions=(16, 2048),  # SD3.5 is trained up to 1024 px (1 MP); multiples of 16 (checked at load)
            max_rollout_batch=1024,  # Flow-GRPO's SD3.5 rollouts are 48 prompts x 24 samples over 32 GPUs
        ),
        FamilySpec(
            "flux",
            "trainer.models.flux:FluxModel.load",
            FLUX_LORA_TARGETS,
            lora_rank=64,  # real-models issue: 64 for FLUX
            eval_guidance=3.5,  # FLUX.1-dev's usual guidance embedding
            needs_model_path=True,
            sample_shape="(16, H/8, W/8): transformer in_channels / 4 (2x2 packing), VAE factor 8",
            resolutions=(16, 2048),  # FLUX.1 up to 2 MP; multiples of 16 (checked at load)
            max_rollout_batch=1024,
        ),
    )
}


def load_model(config: Any, device: str | torch.device = "cpu") -> FlowModel:
    """Build the FlowModel of `config.model` on `device` (each family imports its heavy dependencies lazily)."""
    if config.model not in FAMILIES:
        raise ValueError(f"model must be one of {tuple(FAMILIES)}, got {config.model!r}")
    return FAMILIES[config.model].load(config, device)
