"""Starting a worker as a subprocess (for `flowdppo up` and the tests): same settings, its own process group."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from worker.settings import WorkerSettings


def worker_command(
    *,
    queues: Sequence[str] = ("train", "eval"),
    gpu: int | None = None,
    name: str | None = None,
    reaper: bool = True,
    loglevel: str = "info",
) -> list[str]:
    cmd = [sys.executable, "-m", "worker", "--queues", ",".join(queues)]
    cmd += ["--loglevel", loglevel]
    if gpu is not None:
        cmd += ["--gpu", str(gpu)]
    if name:
        cmd += ["--name", name]
    if not reaper:
        cmd.append("--no-reaper")
    return cmd


def start_worker_process(
    settings: WorkerSettings | None = None,
    *,
    queues: Sequence[str] = ("train", "eval"),
    gpu: int | None = None,
    name: str | None = None,
    reaper: bool = True,
    log_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m worker ...` with `settings` in its environment, in a new session (process group), so the
    caller can stop it and its children with os.killpg(proc.pid, SIGTERM) (SIGKILL to simulate a crash)."""
    settings = settings or WorkerSettings()
    env = {**os.environ, **settings.env(), **(extra_env or {})}
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_file is not None:
        out = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            worker_command(queues=queues, gpu=gpu, name=name, reaper=reaper),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_file is not None:
            out.close()  # type: ignore[union-attr]
