"""Image tensors as 8-bit pixels: what PIL encoders, PNG/JPEG files and logged samples hold (rewards, evaluation)."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1], any device -> (B, H, W, 3) uint8 on the CPU, as PIL expects.

    Rounds rather than truncates, so that 0.5/255 steps land on the nearest code.
    """
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # (B, 3, H, W)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
