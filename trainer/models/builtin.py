"""The built-in tiny model: diffusers' SD3 transformer at 32x32 pixels plus a word-level text encoder.

Small enough to pretrain and RL-train on a 2-core CPU in minutes, behind the same FlowModel interface as SD3/FLUX.
Pixel space: images in [0, 1] map to latents in [-1, 1]; there is no VAE.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.models.base import FlowModel, PromptCache, PromptEmbeds
from trainer.models.families import FAMILIES
from trainer.models.lora import (
    add_lora,
    add_old_adapter,
    load_old_adapter_state_dict,
    old_adapter_active,
    old_adapter_params,
    old_adapter_state_dict,
)

SHIPPED_BASE = "shapes_base.safetensors"  # in trainer/assets/, rebuilt by `flowdppo pretrain-base`
PAD, UNK = "<pad>", "<unk>"

# Measured on 2 CPU cores: ~0.44M parameters, ~70 ms per forward+backward on a batch of 64.
DEFAULT_TRANSFORMER = {
    "sample_size": 32,
    "patch_size": 4,
    "in_channels": 3,
    "out_channels": 3,
    "num_layers": 3,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "caption_projection_dim": 64,  # must equal heads x head_dim
    "pooled_projection_dim": 64,
    "pos_embed_max_size": 8,  # >= sample_size / patch_size
}


class WordTextEncoder(nn.Module):
    """Word embeddings + one transformer layer over a closed vocabulary; returns token states and a pooled vector."""

    def __init__(self, vocab: list[str], dim: int = 64, max_len: int = 12):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len
        self.embed = nn.Embedding(len(vocab), dim)
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        self.layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, batch_first=True, dropout=0.0)
        self.pool = nn.Linear(dim, dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.full((len(prompts), self.max_len), self.index[PAD], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().replace(",", " ").split()[: self.max_len]
            ids[row, : len(words)] = torch.tensor(
                [self.index.get(w, self.index[UNK]) for w in words], dtype=torch.long
            )
        return ids

    def forward(self, prompts: list[str]) -> PromptEmbeds:
        ids = self.tokenize(prompts).to(self.embed.weight.device)  # (B, L)
        pad = ids == self.index[PAD]
        h = self.embed(ids) + self.position  # (B, L, D)
        # An empty prompt (CFG's unconditional branch) is all padding: let it attend to itself rather than to nothing.
        attend_mask = pad & ~pad.all(dim=1, keepdim=True)
        h = self.layer(h, src_key_padding_mask=attend_mask)
        keep = (~pad).float().unsqueeze(-1)  # (B, L, 1)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (B, D) mean over real tokens
        return {"tokens": h, "pooled": self.pool(pooled)}


class BuiltinModel(FlowModel):
    """Tiny SD3-architecture flow model in pixel space (C=3). Full fine-tuning by default; LoRA optional."""

    family = "builtin"

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text_encoder: WordTextEncoder,
        device: str | torch.device = "cpu",
        shift: float = 3.0,
        lora_rank: int = 0,
        lora_alpha: float = 64.0,
        lora_target_modules: list[str] | None = None,
        lora_seed: int = 0,
    ):
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.transformer = transformer.to(self.device)
        self.text_encoder = text_encoder.to(self.device).requires_grad_(False).eval()
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        self.lora_rank = lora_rank
        self.prompt_cache = PromptCache(self.text_encoder, storage=self.device)
        self._reference: SD3Transformer2DModel | None = None
        self._use_reference = False
        self._old: SD3Transformer2DModel | None = None  # theta_old of a full fine-tune (spec §11), when asked for
        self._use_old = False
        if lora_rank > 0:
            targets = list(lora_target_modules or FAMILIES[self.family].lora_targets)
            add_lora(self.transformer, lora_rank, lora_alpha, targets, lora_seed)
        else:
            # Full fine-tuning: pi_ref is a frozen copy (0.44M parameters; cheap).
            self._reference = copy.deepcopy(self.transformer).requires_grad_(False).eval()

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, size, size)

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        return self.prompt_cache.get(list(prompts), self.device)

    def velocity(self, latents, sigma, embeds, guidance_scale: float = 1.0) -> torch.Tensor:
        net = self.transformer
        if self._use_reference and self._reference is not None:
            net = self._reference
        elif self._use_old and self._old is not None:
            net = self._old
        if guidance_scale == 1.0:
            return _predict(net, latents, sigma, embeds["tokens"], embeds["pooled"])
        uncond = self.encode_prompts([""] * latents.shape[0])
        v_cond, v_uncond = _predict(
            net,
            torch.cat([latents, latents]),
            torch.cat([sigma, sigma]),
            torch.cat([embeds["tokens"], uncond["tokens"]]),
            torch.cat([embeds["pooled"], uncond["pooled"]]),
        ).chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float().clamp(-1, 1) + 1) / 2).clamp(0, 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextmanager
    def reference(self):
        if self.lora_rank > 0:
            self.transformer.disable_adapters()
            try:
                yield
            finally:
                self.transformer.enable_adapters()
        else:
            self._use_reference = True
            try:
                yield
            finally:
                self._use_reference = False

    # --- Diffusion-NFT's old weights (spec §11): a second weight set (0.44M parameters), or a second LoRA adapter ---
    def init_old_policy(self) -> None:
        if self.lora_rank > 0:
            add_old_adapter(self.transformer)
        else:
            self._old = copy.deepcopy(self.transformer).requires_grad_(False).eval()
        self.has_old_policy = True

    @contextmanager
    def old_policy(self):
        if not self.has_old_policy:
            raise RuntimeError("BuiltinModel has no old weights: call init_old_policy() first")
        if self.lora_rank > 0:
            with old_adapter_active(self.transformer):
                yield
            return
        self._use_old = True
        try:
            yield
        finally:
            self._use_old = False

    def old_parameters(self) -> list[torch.Tensor]:
        if self.lora_rank > 0:
            return old_adapter_params(self.transformer)
        old = dict(self._old.named_parameters())
        return [old[n] for n, p in self.transformer.named_parameters() if p.requires_grad]

    def old_state_dict(self) -> dict[str, torch.Tensor]:
        if self.lora_rank > 0:
            return old_adapter_state_dict(self.transformer)
        trained = {n for n, p in self.transformer.named_parameters() if p.requires_grad}
        return {n: p.detach().clone() for n, p in self._old.named_parameters() if n in trained}

    def load_old_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.lora_rank > 0:
            load_old_adapter_state_dict(self.transformer, state)
            return
        params = dict(self._old.named_parameters())
        if set(state) - set(params):
            raise ValueError(f"old weights this model does not have: {sorted(set(state) - set(params))[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.transformer.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.transformer.named_parameters())
        unknown = set(state) - set(params)
        if unknown:
            raise ValueError(f"checkpoint has weights this model does not: {sorted(unknown)[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def train(self, mode: bool = True) -> BuiltinModel:
        self.transformer.train(mode)
        return self


def _predict(net, latents, sigma, tokens, pooled) -> torch.Tensor:
    # The SD3 transformer takes timestep = sigma * 1000 (diffusers' convention).
    out = net(hidden_states=latents, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=sigma * 1000)
    return out.sample.float()


def new_networks(vocab: list[str], transformer_config: dict[str, Any] | None = None):
    """Freshly initialised transformer and text encoder (pretraining starts here)."""
    cfg = {**DEFAULT_TRANSFORMER, **(transformer_config or {})}
    text_encoder = WordTextEncoder([PAD, UNK, *sorted(set(vocab) - {PAD, UNK})], dim=cfg["joint_attention_dim"])
    return SD3Transformer2DModel(**cfg), text_encoder


def save_base(path: Path, transformer: SD3Transformer2DModel, text_encoder: WordTextEncoder, info: dict) -> None:
    """One safetensors file: both networks' weights, their configs and the vocabulary in the metadata."""
    tensors = {f"transformer.{k}": v.contiguous() for k, v in transformer.state_dict().items()}
    tensors.update({f"text_encoder.{k}": v.contiguous() for k, v in text_encoder.state_dict().items()})
    meta = {
        "transformer_config": json.dumps({k: v for k, v in transformer.config.items() if not k.startswith("_")}),
        "vocab": json.dumps(text_encoder.vocab),
        "info": json.dumps(info),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_base_networks(path: str | Path | None = None):
    """(transformer, text_encoder, info) from a base file; None = the shipped one."""
    path = Path(path) if path else Path(str(resources.files("trainer") / "assets" / SHIPPED_BASE))
    if not path.is_file():
        raise FileNotFoundError(f"built-in base model not found at {path}; rebuild it with `flowdppo pretrain-base`")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    transformer = SD3Transformer2DModel(**json.loads(meta["transformer_config"]))
    transformer.load_state_dict(
        {k[len("transformer.") :]: v for k, v in tensors.items() if k.startswith("transformer.")}
    )
    vocab = json.loads(meta["vocab"])
    text_encoder = WordTextEncoder(vocab, dim=transformer.config.joint_attention_dim)
    text_encoder.load_state_dict(
        {k[len("text_encoder.") :]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    )
    return transformer, text_encoder, json.loads(meta.get("info", "{}"))


def load_builtin(config, device: str | torch.device = "cpu") -> BuiltinModel:
    """The FlowModel for a TrainConfig with model='builtin' (model_path: a base file; None = shipped)."""
    transformer, text_encoder, _ = load_base_networks(config.model_path)
    if config.resolution != transformer.config.sample_size:
        raise ValueError(
            f"resolution={config.resolution} but the built-in base model generates "
            f"{transformer.config.sample_size}x{transformer.config.sample_size} images"
        )
    return BuiltinModel(
        transformer,
        text_encoder,
        device=device,
        shift=config.shift,
        lora_rank=config.effective_lora_rank,
        lora_alpha=config.effective_lora_alpha,
        lora_target_modules=config.lora_target_modules,
        lora_seed=config.seed,
    )
