"""Model families behind one FlowModel interface; `load_model` picks the family named in the config."""

from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.models.base import FlowModel, PromptEmbeds, select_embeds


def load_model(config: TrainConfig, device: str | torch.device = "cpu") -> FlowModel:
    """Build the FlowModel of `config.model` on `device` (each family imports its heavy dependencies lazily)."""
    if config.model == "builtin":
        from trainer.models.builtin import load_builtin

        return load_builtin(config, device)
    if config.model == "sd3":
        from trainer.models.sd3 import load_sd3

        return load_sd3(config, device)
    if config.model == "flux":
        from trainer.models.flux import load_flux

        return load_flux(config, device)
    raise ValueError(f"model must be 'builtin', 'sd3' or 'flux', got {config.model!r}")


__all__ = ["FlowModel", "PromptEmbeds", "load_model", "select_embeds"]
