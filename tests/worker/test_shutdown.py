"""worker/shutdown.py's SIGTERM forward from the worker's main process: to the pool process running a job only, never
to an idle one (a second SIGTERM can kill an idle child holding the pool's inqueue lock, and the worker then never
exits: see the module docstring), and to every pool process while a job is on its way to one of them."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import billiard.process
import pytest
from celery.worker import state

from worker import shutdown


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """The pids on_worker_shutting_down sends SIGTERM to, with pool processes 101 and 102 alive."""
    sent: list[int] = []
    children = [SimpleNamespace(pid=101), SimpleNamespace(pid=102), SimpleNamespace(pid=None)]
    monkeypatch.setattr(billiard.process, "active_children", lambda: children)
    monkeypatch.setattr(shutdown.os, "kill", lambda pid, sig: sent.append(pid) if sig == signal.SIGTERM else None)
    monkeypatch.setattr(shutdown, "_requested", type(shutdown._requested)())
    return sent


def _requests(monkeypatch, *, reserved: list[int | None], active: list[int]) -> None:
    monkeypatch.setattr(state, "reserved_requests", [SimpleNamespace(worker_pid=p) for p in reserved])
    monkeypatch.setattr(state, "active_requests", [SimpleNamespace(worker_pid=p) for p in active])


def test_an_idle_worker_signals_no_pool_process(monkeypatch, forwarded):
    _requests(monkeypatch, reserved=[], active=[])
    shutdown.on_worker_shutting_down(sig="SIGTERM", how="Warm")
    assert forwarded == [] and shutdown.requested()


def test_only_the_pool_process_running_the_job_is_signalled(monkeypatch, forwarded):
    _requests(monkeypatch, reserved=[102], active=[102])  # accepted by 102; 101 idles (e.g. a replaced child)
    shutdown.on_worker_shutting_down(sig="SIGTERM", how="Warm")
    assert forwarded == [102]


def test_a_job_not_yet_accepted_by_a_pool_process_signals_them_all(monkeypatch, forwarded):
    _requests(monkeypatch, reserved=[None], active=[])  # received, sent to the pool, no process has taken it yet
    shutdown.on_worker_shutting_down(sig="SIGTERM", how="Warm")
    assert forwarded == [101, 102]
