"""worker/slots.py: how many worker processes `flowdppo up` starts (one per GPU, or CPU slots sharing the cores)."""

from __future__ import annotations

import pytest

from worker import slots
from worker.slots import Slot, plan_slots


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int, gpus: str | None = None) -> None:
        monkeypatch.setattr(slots, "cpu_count", lambda: n)
        if gpus is None:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this machine has
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)

    return set_cores


def test_two_cores_give_two_one_thread_slots(cores):
    # The demo's clip and dppo runs train side by side, one core each.
    cores(2)
    assert plan_slots() == [Slot(gpu=None, torch_threads=1)] * 2


def test_cpu_slots_are_capped_and_split_the_cores(cores):
    cores(16)
    assert plan_slots() == [Slot(gpu=None, torch_threads=4)] * slots.MAX_AUTO_CPU_SLOTS
    assert plan_slots(torch_threads=8) == [Slot(gpu=None, torch_threads=8)] * 2
    assert plan_slots(workers=1) == [Slot(gpu=None, torch_threads=16)]  # EMBEDDED_WORKERS=1: the old behaviour


def test_one_core_gives_one_slot(cores):
    cores(1)
    assert plan_slots() == [Slot(gpu=None, torch_threads=1)]


def test_gpus_get_one_worker_each_never_two_on_one(cores):
    cores(8, gpus="2,3")
    assert plan_slots() == [Slot(gpu=2, torch_threads=0), Slot(gpu=3, torch_threads=0)]
    assert plan_slots(workers=5) == [Slot(gpu=2, torch_threads=0), Slot(gpu=3, torch_threads=0)]
    assert plan_slots(device="cpu") == [Slot(gpu=None, torch_threads=2)] * 4  # WORKER_DEVICE=cpu ignores GPUs
