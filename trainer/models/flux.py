"""FLUX.1 (diffusers FluxPipeline) behind the FlowModel interface (spec §1-2, §6).

The trainer sees unpacked latents (B, C, H, W); packing into 2x2 patches (B, H/2·W/2, 4C), the positional ids and
the timestep/guidance conventions of FluxPipeline live in `velocity` only.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from torch import nn

from trainer.models.base import PromptEmbeds
from trainer.models.diffusers_model import DiffusersFlowModel


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2·W/2, 4C): 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H/2·W/2, 4C) -> (B, C, H, W), the inverse of `pack_latents` (FluxPipeline._unpack_latents)."""
    b, _, d = tokens.shape
    tokens = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return tokens.reshape(b, d // 4, height, width)


class FluxModel(DiffusersFlowModel):
    """FLUX.1 [dev|schnell]: 16-channel latents at 1/8 resolution in 2x2 patches, CLIP-L pooled + T5-XXL prompts.

    Conventions (FluxPipeline): the transformer takes timestep = sigma (the pipeline's t/1000), image ids
    (row, col) per patch and zero text ids; the schedule shift is resolution-dependent (`mu`).

    Guidance: a guidance-distilled transformer (FLUX.1-dev, `guidance_embeds=True`) receives `guidance_scale` as
    its guidance embedding, one pass, exactly as FluxPipeline(guidance_scale=...) (3.5 is the usual value; the
    config default 1.0 means weak guidance). A transformer without the embedding (schnell) does true CFG against
    the cached empty prompt when guidance_scale > 1.
    """

    family = "flux"
    pipeline_class = FluxPipeline
    example_model = "black-forest-labs/FLUX.1-dev"
    default_max_sequence_length = 512  # dev: 512, schnell: 256
    default_decode_batch_size = 4

    def __init__(self, pipeline: FluxPipeline, **kwargs: Any):
        super().__init__(pipeline, **kwargs)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        factor = pipeline.vae_scale_factor * 2
        if self.resolution % factor:
            raise ValueError(f"resolution={self.resolution} must be a multiple of {factor} (VAE factor x 2x2 packing)")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.transformer.config.in_channels // 4, side, side)

    def scheduler_kwargs(self) -> dict[str, Any]:
        """`mu` of the dynamic shift for this resolution's token count, as FluxPipeline computes it."""
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return {}
        _, h, w = self.sample_shape
        mu = calculate_shift(
            (h // 2) * (w // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return {"mu": mu}

    def _uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0 and not self.guidance_embeds

    def _encode(self, prompts: list[str], device: torch.device) -> PromptEmbeds:
        prompt_embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}  # (B, L, 4096), (B, 768)

    def _forward(
        self, transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds, guidance: float
    ) -> torch.Tensor:
        b, _, h, w = latents.shape
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)  # (N, 3)
        txt_ids = torch.zeros(embeds["prompt_embeds"].shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance_vec = torch.full((b,), guidance, device=latents.device) if self.guidance_embeds else None
        tokens = transformer(
            hidden_states=pack_latents(latents),  # (B, N, 4C)
            timestep=sigma,  # (B,) FLUX convention: the pipeline's t/1000 = sigma
            guidance=guidance_vec,
            pooled_projections=embeds["pooled_prompt_embeds"],
            encoder_hidden_states=embeds["prompt_embeds"],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return unpack_latents(tokens, h, w)  # (B, C, H, W)
