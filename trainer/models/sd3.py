"""Stable Diffusion 3 / 3.5 (diffusers StableDiffusion3Pipeline) behind the FlowModel interface (spec §1-2, §6)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from torch import nn

from trainer.models.base import PromptEmbeds
from trainer.models.diffusers_model import DiffusersFlowModel


class SD3Model(DiffusersFlowModel):
    """SD3/SD3.5: 16-channel latents at 1/8 resolution, CLIP-L + CLIP-G + T5-XXL prompts, MMDiT transformer.

    Conventions (StableDiffusion3Pipeline): the transformer takes timestep = sigma·1000 and predicts v = eps - x0
    on unpacked latents (B, C, H, W); prompt embeddings are `prompt_embeds` (B, 77 + L_t5, 4096) (CLIP hidden
    states zero-padded to T5's width, then T5's) and `pooled_prompt_embeds` (B, 2048).
    """

    family = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    example_model = "stabilityai/stable-diffusion-3.5-medium"
    default_max_sequence_length = 256  # the pipeline's default (Flow-GRPO uses 128)
    default_decode_batch_size = 8

    def __init__(self, pipeline: StableDiffusion3Pipeline, *, shift: float | None = None, **kwargs: Any):
        super().__init__(pipeline, **kwargs)
        # spec §1: SD3 uses a static shift (3 for SD3.5); the config's `shift` replaces the pipeline's when given.
        overrides = {} if shift is None else {"shift": shift}
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config, **overrides)
        self._timestep_scale = float(self.scheduler.config.num_train_timesteps)  # 1000
        factor = pipeline.vae_scale_factor * self.transformer.config.patch_size
        if self.resolution % factor:
            raise ValueError(f"resolution={self.resolution} must be a multiple of {factor} (VAE factor x patch size)")

    @classmethod
    def _config_options(cls, config: Any) -> dict[str, Any]:
        return {"shift": config.shift}

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.transformer.config.in_channels, side, side)

    def _encode(self, prompts: list[str], device: torch.device) -> PromptEmbeds:
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}  # (B, 77+L, D), (B, P)

    def _forward(
        self, transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds, guidance: float
    ) -> torch.Tensor:
        return transformer(
            hidden_states=latents,  # (B, C, H, W)
            timestep=sigma * self._timestep_scale,  # (B,) SD3 convention: t = sigma·1000
            encoder_hidden_states=embeds["prompt_embeds"],
            pooled_projections=embeds["pooled_prompt_embeds"],
            return_dict=False,
        )[0]
