"""`flowdppo worker [--gpu N] [--queues train,eval]` and `flowdppo reaper`.

A worker runs one job at a time (concurrency 1, not an option): store.lifecycle.claim_run lets a worker take over a
running run that names it, which is only right if that run can be nothing but its own redelivered job.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="Run a Celery worker for training/evaluation jobs (one per GPU).")
    add_worker_arguments(worker)
    worker.set_defaults(handler=run_worker)
    reaper = subparsers.add_parser("reaper", help="Requeue runs whose worker stopped sending heartbeats.")
    reaper.set_defaults(handler=run_reaper)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", type=int, help="GPU index: sets CUDA_VISIBLE_DEVICES before anything loads CUDA.")
    parser.add_argument("--queues", default="train,eval", help="Comma-separated queues (default: train,eval).")
    parser.add_argument("--name", help="Celery node name (default: gpuN@host, or worker-<pid>@host without --gpu).")
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--no-reaper", action="store_true", help="Do not start the heartbeat reaper beside it.")


def run_worker(args: argparse.Namespace) -> int:
    if args.gpu is not None:
        # Before Celery, torch or anything else is imported in this process: children inherit it at fork.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    from store.broker import Queue
    from worker.celery_app import app

    unknown = set(queues) - {q.value for q in Queue}
    if unknown:
        print(f"--queues: unknown {sorted(unknown)}; known: {[q.value for q in Queue]}", file=sys.stderr)
        return 2
    name = args.name or default_node_name(args.gpu)
    reaper = None
    if not args.no_reaper:  # a separate process: never a thread in a parent that forks job children
        reaper = subprocess.Popen([sys.executable, "-m", "worker.reaper"])
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        "--concurrency=1",
        f"--hostname={name}",
        "--prefetch-multiplier=1",
        "--max-tasks-per-child=1",
        "--pool=prefork",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        app.worker_main(argv)
    finally:
        if reaper is not None:
            reaper.terminate()
            reaper.wait(timeout=10)
    return 0


def default_node_name(gpu: int | None) -> str:
    """gpuN@host: one worker per GPU, and one restarted with the same --gpu keeps its name, so it reclaims its own
    redelivered job at once. Without a GPU the pid tells workers of one host apart: a shared name would let one
    take over a run that another is still running."""
    role = f"gpu{gpu}" if gpu is not None else f"worker-{os.getpid()}"
    return f"{role}@{socket.gethostname()}"


def run_reaper(_args: argparse.Namespace) -> int:
    import logging

    from worker.reaper import run_reaper as loop
    from worker.settings import WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s reaper %(levelname)s %(message)s")
    try:
        loop(WorkerSettings())
    except KeyboardInterrupt:
        pass
    return 0
