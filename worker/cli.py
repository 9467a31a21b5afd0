"""`flowdppo worker [--gpu N | --gpus 0,1,2,3 | --ranks N] [--queues train,eval]` and `flowdppo reaper`.

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
    parser.add_argument(
        "--gpus",
        help="GPUs this worker owns for runs of several ranks ('0,1,2,3' or 'all'): it takes the train-w2 ... "
        "train-w<N> queues (spec §12), one run at a time over all of them.",
    )
    parser.add_argument(
        "--ranks", type=int, help="Without GPUs: gloo ranks one run may use (as --gpus with N GPUs; tests, CPU nodes)."
    )
    parser.add_argument(
        "--queues", help="Comma-separated queues (default: train,eval; with --gpus/--ranks N: train-w2..train-wN)."
    )
    parser.add_argument("--name", help="Celery node name (default: gpuN@host, or worker-<pid>@host without --gpu).")
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--no-reaper", action="store_true", help="Do not start the heartbeat reaper beside it.")


def run_worker(args: argparse.Namespace) -> int:
    if args.gpu is not None:
        # Before Celery, torch or anything else is imported in this process: children inherit it at fork.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    ranks = _owned_ranks(args)
    if ranks is None:
        return 2
    if args.gpus or args.ranks:  # read by the job (worker/settings.py): runs of more ranks are sent on
        os.environ["WORKER_RANKS"] = str(ranks)
    from store.broker import Queue, rank_queues
    from worker.celery_app import app

    queues = [q.strip() for q in (args.queues or _default_queues(ranks)).split(",") if q.strip()]
    unknown = set(queues) - {q.value for q in Queue} - set(rank_queues(1024))
    if unknown:
        print(f"--queues: unknown {sorted(unknown)}; known: {[q.value for q in Queue]}", file=sys.stderr)
        return 2
    name = args.name or default_node_name(args.gpu)
    if ranks > 1 and not args.name:  # gpus0-3@host for --gpus 0,1,2,3; ranks2-<pid>@host for --ranks 2
        owned = os.environ["CUDA_VISIBLE_DEVICES"].split(",") if args.gpus else None
        role = f"gpus{owned[0]}-{owned[-1]}" if owned else f"ranks{ranks}-{os.getpid()}"
        name = f"{role}@{socket.gethostname()}"
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


def _owned_ranks(args: argparse.Namespace) -> int | None:
    """The ranks one job of this worker may run: the GPUs of --gpus (CUDA_VISIBLE_DEVICES set to them), --ranks, or
    1; None after printing why the arguments do not fit together."""
    if args.gpus and (args.gpu is not None or args.ranks):
        print("--gpus: give either --gpu, --gpus or --ranks", file=sys.stderr)
        return None
    if not args.gpus:
        return args.ranks or 1
    if args.gpus == "all":
        import torch  # device_count reads NVML: CUDA is not initialised in this parent, which forks

        ids = [str(i) for i in range(torch.cuda.device_count())]
    else:
        ids = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        print(
            f"--gpus: expected GPU indices like 0,1,2,3 or 'all' (with GPUs visible), got {args.gpus!r}",
            file=sys.stderr,
        )
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    return len(ids)


def _default_queues(ranks: int) -> str:
    from store.broker import rank_queues

    return ",".join(rank_queues(ranks)) if ranks > 1 else "train,eval"


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
