"""DiffusersFlowModel: the FlowModel shared by the diffusers-backed families (SD3, FLUX), with its prompt cache.

Spec §2: the network runs in bf16/fp16 while transition math stays float32 (`FlowModel.dtype` is the storage dtype
samples are rounded through); spec §4: pi_ref is the same transformer with its LoRA adapter disabled.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.models.base import FlowModel, PromptCache, PromptEmbeds
from trainer.models.families import FAMILIES
from trainer.models.loading import compute_dtype, from_pretrained
from trainer.models.lora import (
    adapter_disabled,
    add_lora,
    add_old_adapter,
    load_lora_state_dict,
    load_old_adapter_state_dict,
    lora_state_dict,
    old_adapter_active,
    old_adapter_params,
    old_adapter_state_dict,
    save_lora,
)

logger = logging.getLogger(__name__)


# --- full fine-tuning reference ---
class FrozenCopy:
    """pi_ref for full fine-tuning: the initial weights kept on the CPU, put on the device the first time needed.

    With LoRA the reference costs nothing (`adapter_disabled`); a full fine-tune needs a second copy, paid only
    when `reference()` is used (beta > 0 or evaluating the base model).
    """

    def __init__(self, transformer: nn.Module):
        self._state = {k: v.detach().to("cpu", copy=True) for k, v in transformer.state_dict().items()}
        self._template = transformer
        self._module: nn.Module | None = None

    def module(self) -> nn.Module:
        if self._module is None:
            self._module = copy.deepcopy(self._template).requires_grad_(False).eval()
            self._module.load_state_dict(self._state)
            self._state = {}
        return self._module


def _place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move, and cast only when needed (diffusers warns on every `.to(dtype)` of a loaded model)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)


# --- the FlowModel part both diffusers families share ---
TEXT_ENCODER_PLACEMENTS = ("device", "offload", "cpu")
OFFLOAD_BELOW_GIB = 40  # SD3's three text encoders take 11 GB in bf16, FLUX's two 10 GB: too much for a 24 GB card


def default_text_encoder_placement(device: torch.device) -> str:
    """ "device", except on GPUs under OFFLOAD_BELOW_GIB of memory, where the encoders are "offload"ed to the CPU."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return "offload" if total < OFFLOAD_BELOW_GIB else "device"
    return "device"


class DiffusersFlowModel(FlowModel):
    """A diffusers pipeline behind the FlowModel interface; a family adds `_encode`, `_forward` and `sample_shape`.

    Owns: precision (transformer and text encoders in `dtype`, LoRA weights in float32, the transition math left
    to the trainer in float32), LoRA or full fine-tuning, the reference policy, the prompt cache with the text
    encoders' placement, classifier-free guidance and chunked VAE decoding.

    Args:
        pipeline: a diffusers StableDiffusion3Pipeline / FluxPipeline (any dtype; moved and cast here).
        device: where the transformer and VAE run.
        dtype: compute and storage dtype (see `compute_dtype`).
        resolution: image side in pixels.
        lora_rank, lora_alpha, lora_target_modules: LoRA layout; rank 0 = full fine-tuning, targets None = family
            default.
        lora_seed: seeds the adapter's initialisation (the run's seed).
        gradient_checkpointing: recompute transformer blocks in backward (memory for compute).
        text_encoders: "device" (resident), "offload" (kept on the CPU, moved to `device` only while new prompts
            are encoded) or "cpu" (encode on the CPU); None = `default_text_encoder_placement(device)`.
        max_sequence_length: T5 tokens per prompt.
        decode_batch_size: images per VAE decode call.
    """

    pipeline_class: type
    example_model: str  # a hub id, for the message that says how to get the weights
    default_max_sequence_length: int  # T5 tokens per prompt when `load` is not told
    default_decode_batch_size: int  # images per VAE decode call when `load` is not told

    def __init__(
        self,
        pipeline: Any,
        *,
        device: torch.device,
        dtype: torch.dtype,
        resolution: int,
        lora_rank: int = 0,
        lora_alpha: float = 64.0,
        lora_target_modules: list[str] | None = None,
        lora_seed: int = 0,
        gradient_checkpointing: bool = False,
        text_encoders: str | None = None,
        max_sequence_length: int = 256,
        decode_batch_size: int = 8,
    ):
        text_encoders = text_encoders or default_text_encoder_placement(torch.device(device))
        if text_encoders not in TEXT_ENCODER_PLACEMENTS:
            raise ValueError(f"text_encoders must be one of {TEXT_ENCODER_PLACEMENTS}, got {text_encoders!r}")
        self.pipe = pipeline
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # Measured on an H100 (torch 2.11, cu130): cuDNN's fused attention returned NaN in FLUX's training pass
            # and failed in SD3.5-M's backward ("mha_graph.execute"); flash / memory-efficient SDPA are fine.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.dtype = dtype
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size
        self.text_encoders = text_encoders
        self._text_encoders_freed = False
        self._use_reference = False

        self.transformer: nn.Module = pipeline.transformer
        self.vae: nn.Module = pipeline.vae.eval()
        # A full fine-tune keeps float32 master weights and runs under autocast; a LoRA base is cast to `dtype`.
        _place(self.transformer, self.device, torch.float32 if lora_rank == 0 else dtype)
        # bf16 VAEs are fine; fp16 ones can overflow (diffusers upcasts SDXL's), so fp16 decodes in float32.
        _place(self.vae, self.device, torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
        self.vae.requires_grad_(False)
        # "cpu" computes there, in float32 (CPU half kernels are slow); "offload" only parks them there, in `dtype`.
        encoder_device = self.device if text_encoders == "device" else torch.device("cpu")
        for encoder in self._text_encoder_modules():
            _place(encoder, encoder_device, torch.float32 if text_encoders == "cpu" else dtype)
            encoder.requires_grad_(False).eval()

        if lora_rank > 0:
            targets = list(lora_target_modules or FAMILIES[self.family].lora_targets)
            self._trainable = add_lora(self.transformer, lora_rank, lora_alpha, targets, lora_seed)
            self._frozen_copy = None
        else:
            self.transformer.requires_grad_(True)
            self._trainable = list(self.transformer.parameters())
            self._frozen_copy = FrozenCopy(self.transformer)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train(False)
        self.prompt_cache = PromptCache(
            lambda prompts: self._encode(prompts, self._encoder_device()), placement=self._text_encoders_placed
        )

    @classmethod
    def from_pipeline(
        cls, pipeline: Any, config: Any, device: str | torch.device, **kwargs: Any
    ) -> DiffusersFlowModel:
        """Wrap an already-built pipeline with the model fields of a TrainConfig (tests, notebooks)."""
        device = torch.device(device)
        return cls(
            pipeline,
            device=device,
            dtype=compute_dtype(config.mixed_precision, device),
            resolution=config.resolution,
            lora_rank=config.effective_lora_rank,
            lora_alpha=config.effective_lora_alpha,
            lora_target_modules=config.lora_target_modules,
            lora_seed=config.seed,
            gradient_checkpointing=config.gradient_checkpointing,
            **kwargs,
        )

    @classmethod
    def load(
        cls,
        config: Any,
        device: str | torch.device,
        *,
        pipeline: Any = None,
        text_encoders: str | None = None,
        max_sequence_length: int | None = None,
        decode_batch_size: int | None = None,
    ) -> DiffusersFlowModel:
        """The family's model for a TrainConfig (model_path: a local diffusers directory, or a hub id when online).

        Args:
            config: TrainConfig; uses model_path, resolution, lora_*, mixed_precision, gradient_checkpointing and
                what `_config_options` reads (SD3: shift).
            device: where the transformer and VAE run.
            pipeline: an already-built pipeline (tests); model_path is then not read.
            text_encoders: "device", "offload" or "cpu"; None = "offload" on GPUs under 40 GiB, else "device".
            max_sequence_length: T5 tokens per prompt; None = the family's default (SD3 256, FLUX.1-dev 512).
            decode_batch_size: images per VAE decode call; None = the family's default.
        """
        device = torch.device(device)
        if pipeline is None:
            pipeline = from_pretrained(
                cls.pipeline_class,
                config.model_path,
                family=cls.family,
                example=cls.example_model,
                torch_dtype=compute_dtype(config.mixed_precision, device),
            )
        return cls.from_pipeline(
            pipeline,
            config,
            device,
            text_encoders=text_encoders,
            max_sequence_length=max_sequence_length or cls.default_max_sequence_length,
            decode_batch_size=decode_batch_size or cls.default_decode_batch_size,
            **cls._config_options(config),
        )

    @classmethod
    def _config_options(cls, config: Any) -> dict[str, Any]:
        """Family-specific constructor arguments `load` reads from the config (SD3: its static shift)."""
        return {}

    # --- what a family provides ---
    def _text_encoder_modules(self) -> list[nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if m is not None]

    def _encode(self, prompts: list[str], device: torch.device) -> PromptEmbeds:
        """Embeddings of `prompts` from the pipeline's text encoders, which sit on `device`."""
        raise NotImplementedError

    def _forward(
        self, transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds, guidance: float
    ) -> torch.Tensor:
        """One transformer call: latents (B, C, H, W) -> velocity (B, C, H, W) in the transformer's output dtype."""
        raise NotImplementedError

    def _uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    # --- FlowModel ---
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Cached text embeddings of `prompts` on the model device in `dtype`, rows in order (B, ...)."""
        embeds = self.prompt_cache.get(list(prompts), self.device)
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in embeds.items()}

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """v_theta(x, s, prompt) (B, C, H, W) float32; CFG against the cached empty prompt when it applies.

        Args:
            latents: x (B, C, H, W), any float dtype (cast to `dtype`).
            sigma: s (B,) in [0, 1].
            embeds: `encode_prompts` rows for the B samples.
            guidance_scale: CFG scale; 1.0 = a single conditional pass.
        """
        transformer = self._frozen_copy.module() if self._use_reference and self._frozen_copy else self.transformer
        x = latents.to(self.device, self.dtype)
        sigma = sigma.to(self.device, torch.float32).reshape(-1).expand(x.shape[0])
        cfg = self._uses_cfg(guidance_scale)
        if cfg:  # one batched pass over [uncond, cond], as diffusers' pipelines do
            empty = self.encode_prompts([""])
            uncond = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in empty.items()}
            embeds = {k: torch.cat([uncond[k], embeds[k]]) for k in embeds}
            x, sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            v = self._forward(transformer, x, sigma, embeds, guidance_scale).float()  # (B or 2B, C, H, W)
        if cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
        return v

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H', W') float32 in [0, 1] from latents (B, C, H, W), `decode_batch_size` at a time."""
        config = self.vae.config
        images = []
        for chunk in latents.split(self.decode_batch_size):
            z = chunk.to(self.device, self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
            image = self.vae.decode(z, return_dict=False)[0]  # (b, 3, H', W') in [-1, 1]
            images.append((image.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._trainable)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """pi_ref: LoRA disabled (no copy), or for a full fine-tune the initial weights (a copy, made on first use)."""
        if self._frozen_copy is None:
            with adapter_disabled(self.transformer):
                yield
            return
        self._use_reference = True
        try:
            yield
        finally:
            self._use_reference = False

    # --- Diffusion-NFT's old weights (spec §11): a second LoRA adapter "old" ---
    def init_old_policy(self) -> None:
        """theta_old as a second adapter; a full fine-tune would need a second full transformer (refused)."""
        if self._frozen_copy is not None:
            raise ValueError(
                f"{type(self).__name__}: old weights need LoRA (lora_rank > 0); a full fine-tune would keep a "
                "second full transformer in memory"
            )
        add_old_adapter(self.transformer)
        self.has_old_policy = True

    @contextmanager
    def old_policy(self) -> Iterator[None]:
        if not self.has_old_policy:
            raise RuntimeError(f"{type(self).__name__} has no old weights: call init_old_policy() first")
        with old_adapter_active(self.transformer):
            yield

    def old_parameters(self) -> list[torch.Tensor]:
        return old_adapter_params(self.transformer)

    def old_state_dict(self) -> dict[str, torch.Tensor]:
        return old_adapter_state_dict(self.transformer)

    def load_old_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_old_adapter_state_dict(self.transformer, {k: v.to(self.device) for k, v in state.items()})

    def export_weights(self, directory: Path) -> Path | None:
        """A LoRA adapter that `pipe.load_lora_weights(directory)` restores; full fine-tunes have none."""
        return save_lora(self, directory) if self._frozen_copy is None else None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self._frozen_copy is None:
            return lora_state_dict(self.transformer)
        return {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self._frozen_copy is None:
            load_lora_state_dict(self.transformer, {k: v.to(self.device) for k, v in state.items()})
        else:
            self.transformer.load_state_dict(state)

    def train(self, mode: bool = True) -> DiffusersFlowModel:
        self.transformer.train(mode)  # text encoders and VAE stay in eval mode
        return self

    # --- text encoders ---
    def _encoder_device(self) -> torch.device:
        """Where the text encoders compute: the model device under "offload" (inside _text_encoders_placed)."""
        if self.text_encoders == "offload":
            return self.device
        return next(self._text_encoder_modules()[0].parameters()).device

    @contextmanager
    def _text_encoders_placed(self) -> Iterator[None]:
        """The text encoders ready to encode; "offload" moves them to the device once for a whole batch of prompts."""
        if self._text_encoders_freed:
            raise RuntimeError(
                "new prompts are not in the prompt cache and the text encoders were freed by free_text_encoders(); "
                "encode every prompt (and '' for CFG) before freeing them"
            )
        if self.text_encoders != "offload":
            yield
            return
        encoders = self._text_encoder_modules()
        for encoder in encoders:
            _place(encoder, self.device, self.dtype)
        try:
            yield
        finally:
            for encoder in encoders:
                encoder.to("cpu")

    def free_text_encoders(self) -> None:
        """Drop the text encoders once every prompt of the run is cached (frees their memory for training)."""
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)
        self._text_encoders_freed = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
