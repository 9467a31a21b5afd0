"""JPEG (in)compressibility rewards as in DDPO and Flow-GRPO: the encoded file size of each image in kB.

"jpeg_compressibility" is minus the size (smaller files score higher), "jpeg_incompressibility" the size itself.
Encoded with PIL at `quality` (default 95, as in the references) on CPU; no weights, no downloads.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from trainer.images import to_uint8_hwc
from trainer.rewards.registry import RewardFn, register_reward

_DEFAULT_QUALITY = 95  # DDPO / Flow-GRPO
_MAX_QUALITY = 95  # PIL: values above 95 disable parts of the JPEG quantiser and bloat files to no purpose


def jpeg_sizes_kb(images: torch.Tensor, quality: int = _DEFAULT_QUALITY) -> torch.Tensor:
    """Size of each image as a JPEG file.

    Args:
        images: (B, 3, H, W) float in [0, 1], any device.
        quality: JPEG quality passed to PIL, 1-95.

    Returns:
        (B,) float32 on CPU, sizes in kB (1 kB = 1000 bytes).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    sizes = []
    for array in to_uint8_hwc(images):  # (H, W, 3)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


def _quality(name: str, options: dict) -> int:
    """The `quality` option of reward `name` (an int in 1-95)."""
    quality = options.get("quality", _DEFAULT_QUALITY)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= _MAX_QUALITY:
        raise ValueError(f"reward {name!r} option quality={quality!r} must be an int in [1, {_MAX_QUALITY}]")
    return quality


@register_reward("jpeg_compressibility", options=["quality"])
def jpeg_compressibility(device: torch.device, **options) -> RewardFn:
    """Reward = -(JPEG size in kB): RL pushes towards flat, easily compressed images."""
    quality = _quality("jpeg_compressibility", options)

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -jpeg_sizes_kb(images, quality)  # (B,)

    return reward


@register_reward("jpeg_incompressibility", options=["quality"])
def jpeg_incompressibility(device: torch.device, **options) -> RewardFn:
    """Reward = JPEG size in kB: RL pushes towards busy, detailed images."""
    quality = _quality("jpeg_incompressibility", options)

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return jpeg_sizes_kb(images, quality)  # (B,)

    return reward
