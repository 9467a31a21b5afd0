"""Loading the diffusers-backed families' weights (spec §2: the compute dtype): hub ids vs local folders, offline
loading with errors that say how to provide the weights. Imports diffusers only when weights are loaded."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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
    if "torch_dtype" in kwargs and _diffusers_takes_dtype():  # newer diffusers renamed torch_dtype -> dtype
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


def _diffusers_takes_dtype() -> bool:
    """diffusers >= 0.36 takes `dtype=` and warns on `torch_dtype=`; older versions only know `torch_dtype=`."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return False
    return True
