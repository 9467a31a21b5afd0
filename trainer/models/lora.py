"""Plumbing shared by the diffusers-backed families (SD3, FLUX): loading, precision, LoRA adapters, prompt cache.

The spec parts this serves: spec §2 (the network runs in bf16/fp16, transition math stays float32; `FlowModel.dtype`
is the storage dtype samples are rounded through), spec §4 (the reference policy pi_ref of the KL-to-reference
term is the same transformer with its LoRA adapter disabled) and spec §6 (LoRA r=32, alpha=64 for SD3-class models).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
try:  # diffusers >= 0.36 takes `dtype=` and warns on `torch_dtype=`; older versions only know `torch_dtype=`
    from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

    _DIFFUSERS_TAKES_DTYPE = True
except ImportError:
    _DIFFUSERS_TAKES_DTYPE = False
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # "org/name", the only form of a hub id


def is_hub_id(model_path: str) -> bool:
    """True for "org/name": asked of the hub (or its cache), never read from disk. A local directory of that shape
    is written "./org/name"; "." and ".." are path parts, never hub names."""
    return _HUB_ID.match(model_path) is not None and not {".", ".."} & set(model_path.split("/"))


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
    A path that looks local but does not exist fails here, with the command that fixes it. An "org/name" value is
    always a hub id (`is_hub_id`), even where a relative folder of that name exists: what the platform's API lets
    through as a hub id is never read from the worker's disk.
    """
    how = (
        f"download the weights once on a machine with internet, e.g. `huggingface-cli download {example} "
        f"--local-dir /models/{example.split('/')[-1]}`, copy that directory here and set model_path to it"
    )
    if not model_path:
        raise ValueError(f"model_path is required for model={family!r}: {how}")
    if not is_hub_id(model_path):
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model_path {model_path!r} for model={family!r} is not a directory: {how}")
        return {"pretrained_model_name_or_path": str(path), "local_files_only": True}
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
# The reference target modules of SD3-architecture transformers (the built-in model is one too).
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
