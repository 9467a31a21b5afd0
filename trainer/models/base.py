"""The one interface every model family implements (builtin, SD3, FLUX): what sampling and training need."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

PromptEmbeds = dict[str, torch.Tensor]  # batch-first tensors; select rows with `select_embeds`


def select_embeds(embeds: PromptEmbeds, index: torch.Tensor | slice) -> PromptEmbeds:
    """Rows `index` of every batch-first tensor."""
    return {k: v[index] for k, v in embeds.items()}


class PromptCache:
    """Per-prompt text embeddings, computed once for the run and kept on `storage` (CPU by default).

    Each prompt is encoded on its own: an embedding batched with other prompts differs in the last bits, so it
    would depend on which prompts came first, and a resumed run would not repeat the uninterrupted one. SD3's
    embeddings are ~(333, 4096) per prompt: a few MB each, so thousands of prompts live on the CPU and only the
    rows of the current batch go to the GPU. `placement` is entered once around each batch of new prompts (e.g. to
    bring offloaded text encoders to the GPU once, not once per prompt).
    """

    def __init__(
        self,
        encode: Callable[[list[str]], PromptEmbeds],
        storage: str | torch.device = "cpu",
        placement: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ):
        self._encode = encode
        self._placement = placement
        self._rows: dict[str, PromptEmbeds] = {}
        self.storage = torch.device(storage)

    def get(self, prompts: list[str], device: torch.device) -> PromptEmbeds:
        """Embeddings of `prompts` (B rows, in order) on `device`; encodes the prompts not seen before."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        if new:
            with self._placement(), torch.no_grad():
                for prompt in new:
                    embeds = self._encode([prompt])
                    self._rows[prompt] = {k: v[0].to(self.storage) for k, v in embeds.items()}
        keys = self._rows[prompts[0]].keys()
        return {k: torch.stack([self._rows[p][k] for p in prompts]).to(device) for k in keys}


class FlowModel(ABC):
    """A text-conditioned rectified-flow model: x_s = (1-s)·x0 + s·eps, predicts v = eps - x0 (spec §1).

    Subclasses hold the network, its prompt encoder and its decoder; the trainer only sees this interface.
    """

    family: str
    device: torch.device
    dtype: torch.dtype  # compute dtype of the network (bf16/fp16 on GPU); transition math is float32 regardless
    scheduler: FlowMatchEulerDiscreteScheduler

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one latent: (C, H, W) for images, e.g. (C, F, H, W) for video; the trainer is rank-agnostic."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Text embeddings, batch-first; computed once per distinct prompt and cached for the run."""

    @abstractmethod
    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """v_theta(x, s, prompt) in float32. latents (B, C, H, W); sigma (B,) in [0, 1]."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H', W') float32 in [0, 1]."""

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (LoRA adapters, or all weights for full fine-tuning)."""

    @abstractmethod
    def reference(self) -> AbstractContextManager[None]:
        """Inside this context `velocity` is the frozen base policy pi_ref (LoRA: the adapter disabled)."""

    # --- Diffusion-NFT's old weights theta_old (spec §11); families without them raise ---
    has_old_policy: bool = False

    def init_old_policy(self) -> None:
        """Create theta_old as a copy of the trainable weights (a second weight set, or a second LoRA adapter)."""
        raise ValueError(f"{type(self).__name__} keeps no old weights (spec §11: needed by loss='nft')")

    def old_policy(self) -> AbstractContextManager[None]:
        """Inside this context `velocity` is pi_old (theta_old); needs `init_old_policy` first."""
        raise RuntimeError(f"{type(self).__name__} has no old weights: call init_old_policy() first")

    def old_parameters(self) -> list[torch.Tensor]:
        """theta_old's tensors, paired one to one with `trainable_parameters()`; never in the optimizer."""
        raise RuntimeError(f"{type(self).__name__} has no old weights: call init_old_policy() first")

    def old_state_dict(self) -> dict[str, torch.Tensor]:
        """theta_old's weights, detached, for the checkpoint's old.safetensors."""
        raise RuntimeError(f"{type(self).__name__} has no old weights: call init_old_policy() first")

    def load_old_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise RuntimeError(f"{type(self).__name__} has no old weights: call init_old_policy() first")

    @abstractmethod
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights, detached, for safetensors checkpoints."""

    @abstractmethod
    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def train(self, mode: bool = True) -> FlowModel: ...

    def eval(self) -> FlowModel:
        return self.train(False)

    def export_weights(self, directory: Path) -> Path | None:
        """Write the trained weights in the family's standard format (diffusers LoRA for SD3/FLUX) for use outside
        this project; None when the family has no such format (the checkpoint's safetensors is then the export)."""
        return None

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Extra `set_timesteps` arguments (FLUX: `mu` for resolution-dependent shifting)."""
        return {}

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The schedule [1 = s_0 > s_1 > ... > s_T = 0] from diffusers' scheduler, float32 on CPU.

        Spec §1 wants the shift applied to t = linspace(1, 0, T+1); diffusers' default spacing ends at 1/T·(...)
        and wastes the last step on s ~0.009 -> 0, so we hand the scheduler the unshifted grid explicitly and
        let it apply its own shift (static or dynamic) and append the terminal 0.
        """
        grid = np.linspace(1.0, 1.0 / num_steps, num_steps)
        self.scheduler.set_timesteps(sigmas=grid, device="cpu", **self.scheduler_kwargs())
        return self.scheduler.sigmas.to(torch.float32).clone()
