"""How many worker processes `flowdppo up` starts, and on what: one per GPU, or CPU slots that share the cores.

The rule on GPUs stays one run per GPU (one worker process each, `--gpu N`). On a CPU-only machine one run with all
cores is not faster than two runs with half of them each (the built-in model's ops are too small to scale across
threads), so embedded mode starts one worker process per `threads` cores, each job limited to that many torch
threads: a clip-vs-dppo comparison trains side by side on two cores instead of one run after the other. Each slot
is its own worker process (concurrency 1, own node name), so a worker never runs two jobs at once and
store.lifecycle.claim_run's takeover of a run that names the worker stays right.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_AUTO_CPU_SLOTS = 4  # each worker process holds torch (~0.3-0.5 GB); more slots than this only on request
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class Slot:
    """One worker process: on GPU `gpu` (None = CPU), its jobs limited to `torch_threads` threads (0 = torch's)."""

    gpu: int | None
    torch_threads: int


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's cpuset), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus(device: str = "auto") -> list[int]:
    """GPU indexes a worker may use, found without importing torch or touching CUDA (the caller may fork later).

    WORKER_DEVICE=cpu means none; CUDA_VISIBLE_DEVICES, when set, lists them; else the NVIDIA driver's /proc entries.
    """
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [part.strip() for part in listed.split(",") if part.strip()]
        return [int(i) for i in ids if i.isdigit()] if "-1" not in ids else []
    if NVIDIA_GPUS.is_dir():
        return list(range(len(list(NVIDIA_GPUS.iterdir()))))
    return []


def plan_slots(*, workers: int = 0, torch_threads: int = 0, device: str = "auto") -> list[Slot]:
    """The worker processes for `flowdppo up`.

    Args:
        workers: EMBEDDED_WORKERS; 0 = one per visible GPU, else (CPU) one per `torch_threads` cores, at most
            MAX_AUTO_CPU_SLOTS (each with one thread when torch_threads is 0 too).
        torch_threads: WORKER_TORCH_THREADS; 0 = on GPUs torch's default, on CPU the cores split between the slots.
        device: WORKER_DEVICE ('cpu' never plans GPU slots).

    Returns:
        One Slot per worker process to start (at least one).
    """
    gpus = visible_gpus(device)
    if gpus:
        count = min(workers or len(gpus), len(gpus))  # never two runs on one GPU
        return [Slot(gpu=gpu, torch_threads=torch_threads) for gpu in gpus[:count]]
    cores = cpu_count()
    count = workers or max(1, min(MAX_AUTO_CPU_SLOTS, cores // max(1, torch_threads)))
    threads = torch_threads or max(1, cores // count)
    return [Slot(gpu=None, torch_threads=threads) for _ in range(count)]
