"""Preempting the running job when its worker is stopped (SIGTERM: deploys, preemptible nodes, `compose stop`).

Celery's warm shutdown alone waits for the running job to FINISH, hours for a training run, so the worker is
killed at the end of the grace period and the run is only recovered later by the heartbeat reaper. Instead, a
stop sets a process-wide flag that the job's StoreCallback.should_stop() reads between steps: the trainer writes
a checkpoint and returns, and the job puts its run back in the queue (jobs._preempt). Then Celery's warm shutdown
completes on its own: the job has returned, the pool child exits, the worker exits.

Who receives the SIGTERM, and how the flag gets set:
- the worker's main process always (docker's init forwards the signal to it alone). Celery's handler fires
  `worker_shutting_down` there: on_worker_shutting_down() sets the flag (the solo and threads pools run the job
  in this process) and forwards SIGTERM to the prefork pool's child running a job, which Celery's warm shutdown
  does not signal (it closes the pool and waits for the job). Never to an idle child: the warm shutdown ends it
  with the pool's sentinel, and a second SIGTERM can kill it holding the pool's inqueue lock (below).
- the pool child running the job, directly too when the whole process group is signalled (`kill -TERM -PGID`,
  Ctrl-C in a terminal, embedded.py). A prefork child otherwise dies at once on SIGTERM (billiard's handler
  exits it: WorkerLostError, the message is requeued, the run stays 'running' until the reaper finds it), so
  while a job runs, preemptible() replaces that handler with one that only sets the flag.

Why an idle child must get one SIGTERM, not two: it waits for its next job blocked in a read of the pool's inqueue
while holding the queue's read lock (a semaphore shared by the pool's processes). billiard's handler exits it with
SystemExit, which releases the lock, but first resets SIGTERM to the default action: a second SIGTERM (the group's
plus a forward) arriving before the lock is released kills it with the lock held. The pool then replaces it, the
new child blocks on that lock forever instead of reading its shutdown sentinel, and the worker never exits (its
pool join, or billiard's exit handler, waits on the lock). Measured with two back-to-back SIGTERMs to an idle
billiard child: 9 of 40 killed by the default action, 1 of 40 left the lock held; under load the window widens.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_requested = threading.Event()
_main_pid = os.getpid()  # the worker's main process imports this module before its pool forks
_in_pool_child = False  # True in prefork pool children only


def requested() -> bool:
    """True once this worker process was told to stop: a running job should checkpoint and requeue its run."""
    return _requested.is_set()


def request() -> None:
    _requested.set()


def on_worker_process_init(**_kwargs: Any) -> None:
    """Celery `worker_process_init`: in each prefork pool child after the fork, and in the main process of the solo
    pool, whose SIGTERM handler (Celery's warm shutdown) must stay."""
    global _in_pool_child
    _in_pool_child = os.getpid() != _main_pid


def job_processes() -> set[int] | None:
    """The pids of the pool processes running a job (Celery's accepted requests), or None while a job is on its
    way to a pool process (received, not yet accepted by one): which one is not known yet."""
    from celery.worker import state

    if any(r.worker_pid is None for r in list(state.reserved_requests)):
        return None
    return {r.worker_pid for r in list(state.active_requests) if r.worker_pid is not None}


def on_worker_shutting_down(sig: str = "", how: str = "", **_kwargs: Any) -> None:
    """Celery `worker_shutting_down` (main process, inside the signal handler): flag, then tell the pool child that
    runs a job (all of them while a job is on its way to one; idle ones never: see the module docstring)."""
    _requested.set()
    import billiard.process

    running = job_processes()
    # Only the prefork pool's processes (billiard's); the reaper beside the worker is a plain subprocess.
    for child in billiard.process.active_children():
        if child.pid is None or (running is not None and child.pid not in running):
            continue
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    # A plain write: logging's locks are not safe in a signal handler.
    os.write(2, f"flowdppo: {how or 'warm'} shutdown ({sig}): the running job stops after its current step\n".encode())


def _on_sigterm(_signum: int, _frame: object) -> None:
    _requested.set()


@contextmanager
def preemptible() -> Iterator[None]:
    """Around a job: in a prefork pool child, SIGTERM sets the stop flag instead of killing the process.

    Elsewhere (solo/threads pools, plain calls) the process's own handlers stay; worker_shutting_down sets the flag.
    """
    if not _in_pool_child or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
