"""Stable Diffusion 3 / 3.5 (diffusers StableDiffusion3Pipeline) behind the FlowModel interface (spec §1-2, §6)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from torch import nn

from trainer.models.base import PromptEmbeds
from trainer.models.lora import SD3_LORA_TARGETS, compute_dtype, from_pretrained
from trainer.models.pipeline import DiffusersFlowModel


# Flow-GRPO's SD3.5 LoRA layout (spec §6: r=32, alpha=64): the joint attention of every MMDiT block, image and
# text streams. SD3.5-M's extra self-attention (`attn2`) and the MLPs stay frozen, as in the reference.
class SD3Model(DiffusersFlowModel):
    """SD3/SD3.5: 16-channel latents at 1/8 resolution, CLIP-L + CLIP-G + T5-XXL prompts, MMDiT transformer.

    Conventions (StableDiffusion3Pipeline): the transformer takes timestep = sigma·1000 and predicts v = eps - x0
    on unpacked latents (B, C, H, W); prompt embeddings are `prompt_embeds` (B, 77 + L_t5, 4096) (CLIP hidden
    states zero-padded to T5's width, then T5's) and `pooled_prompt_embeds` (B, 2048).
    """

    family = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    default_lora_targets = SD3_LORA_TARGETS

    def __init__(self, pipeline: StableDiffusion3Pipeline, *, shift: float | None = None, **kwargs: Any):
        super().__init__(pipeline, **kwargs)
        # spec §1: SD3 uses a static shift (3 for SD3.5); the config's `shift` replaces the pipeline's when given.
        overrides = {} if shift is None else {"shift": shift}
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config, **overrides)
        self._timestep_scale = float(self.scheduler.config.num_train_timesteps)  # 1000
        factor = pipeline.vae_scale_factor * self.transformer.config.patch_size
        if self.resolution % factor:
            raise ValueError(f"resolution={self.resolution} must be a multiple of {factor} (VAE factor x patch size)")

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


def load_sd3(
    config: Any,
    device: str | torch.device,
    *,
    pipeline: StableDiffusion3Pipeline | None = None,
    text_encoders: str | None = None,
    max_sequence_length: int = 256,
    decode_batch_size: int = 8,
) -> SD3Model:
    """Build an SD3Model from a TrainConfig (model_path: a local diffusers directory, or a hub id when online).

    Args:
        config: TrainConfig; uses model_path, resolution, lora_*, mixed_precision, gradient_checkpointing, shift.
        device: where the transformer and VAE run.
        pipeline: an already-built pipeline (tests); model_path is then not read.
        text_encoders: "device", "offload" or "cpu"; None = "offload" on GPUs under 40 GiB, else "device".
        max_sequence_length: T5 tokens per prompt (the pipeline's default 256; Flow-GRPO uses 128).
        decode_batch_size: images per VAE decode call.
    """
    device = torch.device(device)
    if pipeline is None:
        pipeline = from_pretrained(
            StableDiffusion3Pipeline,
            config.model_path,
            family="sd3",
            example="stabilityai/stable-diffusion-3.5-medium",
            torch_dtype=compute_dtype(config.mixed_precision, device),
        )
    return SD3Model.from_pipeline(
        pipeline,
        config,
        device,
        shift=config.shift,
        text_encoders=text_encoders,
        max_sequence_length=max_sequence_length,
        decode_batch_size=decode_batch_size,
    )
