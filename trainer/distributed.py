"""One run over W data-parallel ranks (spec §12): the process group from torchrun's environment and the collectives
the training loop needs (rollout and reward gathers, gradient sync, statistics, the stop flag).

W = 1 is the plain single-process loop: every method of `Ranks()` then returns its input untouched, so a run without
torchrun computes exactly what it always has. With W > 1:

- rank k samples a contiguous slice of whole groups (`rows`); the full-batch noise is still drawn on every rank from
  the (seed, step, purpose) generators and sliced, so the samples are the single-process ones bit for bit;
- the trajectories and rewards are all-gathered, and advantages are computed on the full batch by the same code on
  every rank (bitwise equal to W = 1);
- each global minibatch is cut into W equal contiguous shares; DistributedDataParallel averages the gradients of the
  shares, each scaled by its rows, so the update is the single-process update of the whole minibatch (the loss
  denominators are fixed row counts: dppo's masked terms count as zeros) and the norm clipping sees the global
  gradient; micro-batches accumulate under `no_sync`;
- rank 0 alone reports, evaluates and checkpoints; a stop is agreed by one all-reduce at the step boundary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from trainer.callbacks import Callback, NullCallback
from trainer.stats import StepStats

if TYPE_CHECKING:
    from trainer.models.base import FlowModel
    from trainer.rollout import Rollout

# A collective that waits longer than this ends the attempt (a dead or hung rank). It must exceed the longest phase
# rank 0 runs alone while the others wait: held-out evaluation, logged samples and a checkpoint save.
COLLECTIVE_TIMEOUT_ENV = "FLOWDPPO_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 900.0


class DistributedSetupError(RuntimeError):
    """The process group cannot be formed as asked (NCCL without a GPU, more ranks than GPUs, a bad timeout)."""


def collective_timeout() -> timedelta:
    """The collective timeout: FLOWDPPO_COLLECTIVE_TIMEOUT_S seconds, 900 (15 min) by default."""
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV, str(DEFAULT_COLLECTIVE_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise DistributedSetupError(f"{COLLECTIVE_TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def check_backend(device: str | torch.device, nproc: int = 1) -> str:
    """The backend for ranks on `device` (nccl on CUDA, gloo on CPU); a clear error when CUDA is asked for and absent.

    Checked before any rank starts: NCCL on a machine without a GPU would otherwise fail late or hang in rendezvous.
    """
    if torch.device(device).type != "cuda":
        return "gloo"
    if not torch.cuda.is_available():
        raise DistributedSetupError(
            f"device={device!s} asks for NCCL ranks but this machine has no usable GPU "
            "(torch.cuda.is_available() is False); use --device cpu for gloo ranks"
        )
    if nproc > torch.cuda.device_count():
        raise DistributedSetupError(
            f"{nproc} ranks per node asked but this machine has {torch.cuda.device_count()} GPUs (one rank per GPU)"
        )
    return "nccl"


def init_from_env(device: str | torch.device = "cpu") -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    Returns this process's `Ranks` and its device (cuda:LOCAL_RANK for NCCL ranks). Without torchrun's environment
    (WORLD_SIZE unset or 1) nothing is initialised: `Ranks()` and `device` as given.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = check_backend(device, nproc=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    here = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(here)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=collective_timeout(), device_id=here if backend == "nccl" else None)
    return Ranks.current(), here if torch.device(device).type == "cuda" else torch.device(device)


def shutdown() -> None:
    """Leave the process group (after the last collective of the run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _DDPView:
    """Stands in for `model.transformer` during one micro-batch: calls go through DDP (its gradient hooks), attribute
    reads go to the wrapped module, so the model's own `velocity` code runs unchanged."""

    def __init__(self, ddp: torch.nn.parallel.DistributedDataParallel):
        self._ddp = ddp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddp.module, name)


@dataclass
class Ranks:
    """This process's place in the run (rank of world_size) and the collectives over all of them."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives' tensors live
    _ddp: dict[int, torch.nn.parallel.DistributedDataParallel] = field(default_factory=dict, repr=False)

    @classmethod
    def current(cls) -> Ranks:
        """The initialised default process group, or a single rank when there is none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)

    def expect(self, num_processes: int) -> Ranks:
        """self, when the config's rank count is this process group's; a ValueError naming both otherwise."""
        if num_processes != self.world_size:
            raise ValueError(f"num_processes={num_processes} but this run has {self.world_size} ranks")
        return self

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only(self, callback: Callback) -> Callback:
        """Rank 0 reports through `callback`; the other ranks report nothing (spec §12)."""
        return callback if self.is_main else NullCallback()

    def rows(self, total: int) -> slice:
        """This rank's contiguous share of `total` rows (the caller keeps whole groups together: P % W == 0)."""
        share = total // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of one global minibatch's row indices (its size is divisible by W)."""
        return rows[self.rows(len(rows))]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any (one all-reduce of one element: the stop agreement)."""
        if self.world_size == 1:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather_rewards(self, table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's rewards in global sample order: name -> (B,) on CPU (one all-gather of a (B/W, K) table)."""
        if self.world_size == 1 or not table:
            return table
        local = torch.stack(list(table.values()), dim=1)  # (B/W, K)
        full = self._gather(local.to(self.device)).cpu()  # (B, K)
        return {name: full[:, k].clone() for k, name in enumerate(table)}

    def gather_rollout(self, rollout: Rollout) -> Rollout:
        """The full batch's trajectory on every rank, from each rank's slice (global sample order)."""
        if self.world_size == 1:
            return rollout
        traj = rollout.traj
        full = replace(
            traj,
            x=self._gather(traj.x),
            x_next=self._gather(traj.x_next),
            logp_old=self._gather(traj.logp_old),
            mean_old=self._gather(traj.mean_old),
            final=self._gather(traj.final),
            mean_ref=self._gather_ragged(traj.mean_ref, like=traj.mean_old),
        )
        return replace(rollout, traj=full)

    def reduce_stats(self, stats: StepStats, optimizer_steps: int) -> StepStats:
        """All ranks' statistics of the step in the single-process order (one all-gather, one host transfer each)."""
        if self.world_size == 1:
            return stats
        parts: list[StepStats | None] = [None] * self.world_size
        dist.all_gather_object(parts, stats.to_host())
        return StepStats.interleave(parts, optimizer_steps)

    @contextmanager
    def synced(self, model: FlowModel, sync: bool) -> Iterator[None]:
        """One micro-batch's forward and backward through DistributedDataParallel; `sync=False` (all but a minibatch's
        last micro-batch) accumulates locally under no_sync, the last one all-reduces the minibatch's gradient."""
        if self.world_size == 1:
            yield
            return
        module = model.transformer
        ddp = self._wrapped(module)
        model.transformer = _DDPView(ddp)
        try:
            with nullcontext() if sync else ddp.no_sync():
                yield
        finally:
            model.transformer = module

    def _wrapped(self, module: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
        """DDP around the trained network (LoRA or full), built once. The ranks load identical weights, so DDP's
        initial broadcast is skipped; buffers are constant, so they are not re-broadcast at every forward."""
        if id(module) not in self._ddp:
            self._ddp[id(module)] = torch.nn.parallel.DistributedDataParallel(
                module,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,
                init_sync=False,
            )
        return self._ddp[id(module)]

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        """All ranks' equal-sized `local` tensors, concatenated in rank order along dim 0."""
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def _gather_ragged(self, local: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """Like `_gather` for rows that only some ranks hold (the kl_ref monitor's first rows); None = no rows."""
        rows = torch.tensor([0 if local is None else len(local)], device=self.device)
        counts = [torch.zeros_like(rows) for _ in range(self.world_size)]
        dist.all_gather(counts, rows)
        counts = [int(c.item()) for c in counts]
        if not max(counts):
            return None
        padded = like.new_zeros((max(counts), *like.shape[1:]))
        if local is not None:
            padded[: len(local)] = local
        parts = self._gather(padded).split(max(counts))
        return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
