"""LoRA adapters on diffusers transformers (spec §6: r=32, alpha=64 for SD3-class models; spec §4: pi_ref is the
same transformer with its adapter disabled): inject, switch off, read and write the adapter weights; Diffusion-NFT's
old weights as a second adapter "old" (spec §11)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn


def add_lora(
    transformer: nn.Module, rank: int, alpha: float, target_modules: list[str], seed: int = 0
) -> list[nn.Parameter]:
    """Inject a peft LoRA adapter ("default") into a diffusers transformer; returns its parameters in float32.

    The adapter weights stay float32 even when the base runs in bf16/fp16 (diffusers' `cast_training_params`):
    AdamW updates of ~1e-6 relative size vanish in bf16. peft casts the activations into the adapter's dtype.
    lora_A's Gaussian init is drawn from `seed` (peft draws it on the CPU before moving it to the base layer's
    device), without touching the process's global RNG: same seed, same run.
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
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays as it was
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


# --- Diffusion-NFT's old weights as a second adapter (spec §11) ---
OLD_ADAPTER = "old"


def _adapter_params(transformer: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """The LoRA parameters of one adapter by name ("...lora_A.<adapter>.weight"), in module order."""
    return {n: p for n, p in transformer.named_parameters() if "lora_" in n and f".{adapter}." in n}


def add_old_adapter(transformer: nn.Module) -> None:
    """A second adapter "old" with the "default" adapter's layout and weights (theta_old starts equal to theta).

    diffusers' add_adapter activates the new adapter, and peft's set_adapter gives the active adapter's weights
    requires_grad=True and the others False: switching back to "default" keeps "old" frozen, out of the optimizer.
    Float32 like the trained adapter (`add_lora`). A second call only copies the weights again.
    """
    if OLD_ADAPTER not in transformer.peft_config:
        config = copy.deepcopy(transformer.peft_config["default"])
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # two adapters is the point here
            transformer.add_adapter(config, adapter_name=OLD_ADAPTER)  # its random init is overwritten below
        transformer.set_adapter("default")
    trained = _adapter_params(transformer, "default").values()
    with torch.no_grad():
        for old, new in zip(old_adapter_params(transformer), trained, strict=True):
            old.data = new.detach().float().clone()


def old_adapter_params(transformer: nn.Module) -> list[nn.Parameter]:
    """The "old" adapter's parameters, paired one to one with the "default" adapter's (the trainable ones)."""
    old = _adapter_params(transformer, OLD_ADAPTER)
    names = [n.replace(".default.", f".{OLD_ADAPTER}.") for n in _adapter_params(transformer, "default")]
    return [old[n] for n in names]


@contextmanager
def old_adapter_active(transformer: nn.Module) -> Iterator[None]:
    """pi_old: the same base weights with the "old" adapter in place of "default"."""
    transformer.set_adapter(OLD_ADAPTER)
    try:
        yield
    finally:
        transformer.set_adapter("default")  # re-enables grad on "default", freezes "old" again


def old_adapter_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The "old" adapter's weights under their module names, detached (a checkpoint's old.safetensors)."""
    return {n: p.detach().clone() for n, p in _adapter_params(transformer, OLD_ADAPTER).items()}


def load_old_adapter_state_dict(transformer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = _adapter_params(transformer, OLD_ADAPTER)
    if set(state) != set(params):
        raise ValueError(
            f"old-adapter state does not match the model's: missing {sorted(set(params) - set(state))[:3]}, "
            f"unexpected {sorted(set(state) - set(params))[:3]}"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
