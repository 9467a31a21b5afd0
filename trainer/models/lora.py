"""Plumbing shared by the diffusers-backed families (SD3, FLUX): loading, precision, LoRA adapters, prompt cache.

The spec parts this serves: spec §2 (the network runs in bf16/fp16, transition math stays float32; `FlowModel.dtype`
is the storage dtype samples are rounded through), spec §4 (the reference policy pi_ref of the KL-to-reference
term is the same transformer with its LoRA adapter disabled) and spec §6 (LoRA r=32, alpha=64 for SD3-class models).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.models.base import FlowModel, PromptEmbeds

logger = logging.getLogger(__name__)

MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
try:  # diffusers >= 0.36 takes `dtype=` and warns on `torch_dtype=`; older versions only know `torch_dtype=`
    from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

    _DIFFUSERS_TAKES_DTYPE = True
except ImportError:
    _DIFFUSERS_TAKES_DTYPE = False
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # "org/name", the only form of a hub id


def compute_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype the transformer runs (and samples are stored) in: float32 on CPU whatever the config says.

    CPU half-precision kernels are slow or missing, and the tests run on CPU; on CUDA the config decides.
    """
    if mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ValueError(f"mixed_precision must be one of {sorted(MIXED_PRECISION_DTYPES)}, got {mixed_precision!r}")
    if device.type == "cpu" and mixed_precision != "no":
        logger.warning("mixed_precision=%r ignored on CPU: the model runs in float32", mixed_precision)
        return torch.float32
    return MIXED_PRECISION_DTYPES[mixed_precision]


def pretrained_kwargs(model_path: str | None, family: str, example: str) -> dict[str, Any]:
    """Validate `model_path` before diffusers sees it and decide whether the hub may be asked.

    A directory is read with local_files_only=True (no network ever), as is anything when HF_HUB_OFFLINE is set.
    A path that looks local but does not exist fails here, with the command that fixes it.
    """
    how = (
        f"download the weights once on a machine with internet, e.g. `huggingface-cli download {example} "
        f"--local-dir /models/{example.split('/')[-1]}`, copy that directory here and set model_path to it"
    )
    if not model_path:
        raise ValueError(f"model_path is required for model={family!r}: {how}")
    path = Path(model_path).expanduser()
    if path.is_dir():
        return {"pretrained_model_name_or_path": str(path), "local_files_only": True}
    if path.exists() or not _HUB_ID.match(model_path):
        raise FileNotFoundError(f"model_path {model_path!r} for model={family!r} is not a directory: {how}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    return {"pretrained_model_name_or_path": model_path, "local_files_only": offline}


def from_pretrained(pipeline_cls: type, model_path: str | None, family: str, example: str, **kwargs: Any) -> Any:
    """`pipeline_cls.from_pretrained` with `pretrained_kwargs` and an error that says how to provide the weights."""
    load_kwargs = pretrained_kwargs(model_path, family, example)
    if "torch_dtype" in kwargs and _DIFFUSERS_TAKES_DTYPE:  # newer diffusers renamed torch_dtype -> dtype
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    try:
        return pipeline_cls.from_pretrained(**load_kwargs, **kwargs)
    except OSError as err:  # diffusers/huggingface_hub raise OSError subclasses for missing files and no network
        where = "offline (HF_HUB_OFFLINE or a local directory)" if load_kwargs["local_files_only"] else "from the hub"
        raise FileNotFoundError(
            f"could not load {family} weights {model_path!r} {where}: {err}. Set model_path to a local directory "
            f"holding the full diffusers layout (model_index.json, transformer/, vae/, text_encoder*/, tokenizer*/), "
            f"e.g. from `huggingface-cli download {example} --local-dir /models/{example.split('/')[-1]}`."
        ) from err


# --- LoRA ---
def add_lora(transformer: nn.Module, rank: int, alpha: float, target_modules: list[str]) -> list[nn.Parameter]:
    """Inject a peft LoRA adapter ("default") into a diffusers transformer; returns its parameters in float32.

    The adapter weights stay float32 even when the base runs in bf16/fp16 (diffusers' `cast_training_params`):
    AdamW updates of ~1e-6 relative size vanish in bf16. peft casts the activations into the adapter's dtype.
    """
    from peft import LoraConfig

    known = {name for name, _ in transformer.named_modules()}
    unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in known)]
    if unmatched:
        raise ValueError(
            f"lora_target_modules {unmatched} match no module of {type(transformer).__name__}; module names end "
            f"with e.g. 'attn.to_q', 'attn.to_out.0', 'ff.net.2'"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    transformer.requires_grad_(False)
    transformer.add_adapter(config)  # diffusers' PeftAdapterMixin: the layout `load_lora_weights` reads back
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


@contextmanager
def adapter_disabled(transformer: nn.Module) -> Iterator[None]:
    """The frozen base policy pi_ref: the same weights with the LoRA adapter switched off (no second copy)."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()  # also restores requires_grad on the adapter weights


def lora_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under peft's adapter-name-free keys (what `save_lora_weights` expects), detached."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(transformer).items()}


def load_lora_state_dict(transformer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(transformer))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"LoRA state dict does not match the adapter (rank/targets changed?): missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    set_peft_model_state_dict(transformer, state)


def save_lora(model: Any, directory: str | Path) -> Path:
    """Write the adapter of an SD3/FLUX model so that `pipe.load_lora_weights(directory)` restores it.

    Uses the family's `save_lora_weights` (diffusers' LoRA loader mixin) with the adapter config as metadata, so
    that lora_alpha != rank survives the round trip. Returns the directory.
    """
    transformer = model.transformer
    if not getattr(transformer, "_hf_peft_config_loaded", False):
        raise ValueError("save_lora needs a LoRA model (lora_rank > 0); full fine-tunes save the transformer instead")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.pipeline_class.save_lora_weights(
        directory,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    return directory


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


# --- prompt cache ---
class PromptCache:
    """Per-prompt text embeddings, computed once for the run and kept on `storage` (CPU by default).

    SD3's embeddings are ~(333, 4096) per prompt: a few MB each, so thousands of prompts live on the CPU and only
    the rows of the current batch go to the GPU.
    """

    def __init__(self, encode: Callable[[list[str]], PromptEmbeds], batch_size: int = 16, storage: str = "cpu"):
        self._encode = encode
        self._rows: dict[str, PromptEmbeds] = {}
        self.batch_size = batch_size
        self.storage = torch.device(storage)

    def get(self, prompts: list[str], device: torch.device) -> PromptEmbeds:
        """Embeddings of `prompts` (B rows, in order) on `device`; encodes the prompts not seen before."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            with torch.no_grad():
                embeds = self._encode(chunk)
            for i, prompt in enumerate(chunk):
                self._rows[prompt] = {k: v[i].to(self.storage) for k, v in embeds.items()}
        keys = self._rows[prompts[0]].keys()
        return {k: torch.stack([self._rows[p][k] for p in prompts]).to(device) for k in keys}


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
        gradient_checkpointing: recompute transformer blocks in backward (memory for compute).
        text_encoders: "device" (resident), "offload" (kept on the CPU, moved to `device` only while new prompts
            are encoded) or "cpu" (encode on the CPU); None = `default_text_encoder_placement(device)`.
        max_sequence_length: T5 tokens per prompt.
        decode_batch_size: images per VAE decode call.
    """

    pipeline_class: type
    default_lora_targets: tuple[str, ...]

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
            targets = list(lora_target_modules or self.default_lora_targets)
            self._trainable = add_lora(self.transformer, lora_rank, lora_alpha, targets)
            self._frozen_copy = None
        else:
            self.transformer.requires_grad_(True)
            self._trainable = list(self.transformer.parameters())
            self._frozen_copy = FrozenCopy(self.transformer)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train(False)
        self.prompt_cache = PromptCache(self._encode_on_encoder_device)

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
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_target_modules=config.lora_target_modules,
            gradient_checkpointing=config.gradient_checkpointing,
            **kwargs,
        )

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
    def _encode_on_encoder_device(self, prompts: list[str]) -> PromptEmbeds:
        if self._text_encoders_freed:
            raise RuntimeError(
                f"prompts {prompts[:3]} are not in the prompt cache and the text encoders were freed by "
                f"free_text_encoders(); encode every prompt (and '' for CFG) before freeing them"
            )
        encoders = self._text_encoder_modules()
        if self.text_encoders != "offload":
            return self._encode(prompts, next(encoders[0].parameters()).device)
        for encoder in encoders:
            _place(encoder, self.device, self.dtype)
        try:
            return self._encode(prompts, self.device)
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
