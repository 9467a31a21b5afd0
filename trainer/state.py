"""The train state (spec §6): the policy (with Diffusion-NFT's old weights, §11), its optimizer, the EMA of its
trainable weights and the step, and its checkpoint round trip (trainer.checkpoint holds the file layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.loss_registry import LOSSES
from trainer.models.base import FlowModel


@dataclass
class TrainState:
    """What the loop carries from one step to the next; everything else of a run is derived from (seed, step)."""

    model: FlowModel
    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None  # float32 EMA of the trainable weights (evaluation uses it), None = off
    step: int = 0  # optimisation steps (RL iterations) completed

    @classmethod
    def create(cls, config: TrainConfig, model: FlowModel) -> TrainState:
        """A fresh state: AdamW over the trainable parameters (spec §6), the EMA starting at the initial weights."""
        optimizer = torch.optim.AdamW(
            model.trainable_parameters(),
            lr=config.learning_rate,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
            eps=config.adam_eps,
        )
        ema = {n: v.float().clone() for n, v in model.trainable_state_dict().items()} if config.ema_decay else None
        if LOSSES[config.loss].family == "forward":
            model.init_old_policy()  # Diffusion-NFT: theta_old starts equal to theta (spec §11)
        return cls(model=model, optimizer=optimizer, ema=ema)

    def restore(self, out_dir: Path) -> Path | None:
        """Load the newest checkpoint under out_dir into this state; returns its folder, None when there is none."""
        path = latest_checkpoint(out_dir)
        if path is None:
            return None
        checkpoint = load_checkpoint(path, map_location=self.model.device)
        self.model.load_trainable_state_dict(checkpoint.trainable)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.model.has_old_policy:
            if checkpoint.old is None:
                raise ValueError(f"checkpoint {path} has no old.safetensors, which this run's loss needs (spec §11)")
            self.model.load_old_state_dict(checkpoint.old)
        self.ema, self.step = checkpoint.ema, checkpoint.step
        return path

    def save(self, out_dir: Path, config: TrainConfig) -> Path:
        """A resumable checkpoint of this step, plus the family's export (SD3/FLUX: a diffusers LoRA folder)."""
        trainable = self.model.trainable_state_dict()
        old = self.model.old_state_dict() if self.model.has_old_policy else None
        path = save_checkpoint(out_dir, self.step, trainable, self.optimizer, self.ema, config.to_json(), old=old)
        self.model.export_weights(path / "lora")  # loadable with diffusers' load_lora_weights
        return path

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay·ema + (1 - decay)·theta after each optimizer step.

        Hand-written rather than diffusers' EMAModel: EMAModel.step, even with its decay held constant
        (decay = min_decay, update_after_step=-1, use_ema_warmup=False), computes s -= (1 - d)·(s - theta), which
        differs from lerp_ in the last bit of ~10-20% of the weights after a few steps (measured, diffusers 0.42), so
        the EMA evaluation metrics would change; its state_dict is also not the name -> tensor safetensors layout the
        checkpoints hold.
        """
        if self.ema is None:
            return
        for name, value in self.model.trainable_state_dict().items():
            self.ema[name].lerp_(value.float(), 1 - decay)
