"""`flowdppo up`: the whole platform on one machine (platform.md "Embedded"): migrations, a local team and token,
worker subprocesses (one per GPU or CPU slot, worker/slots.py; the first with the heartbeat reaper), and the API +
dashboard (server.py) in this process. Ctrl-C stops it all. A composition module beside server.py: the one place
besides it that knows api/ and worker/ both.

The same code runs distributed when DATABASE_URL / BROKER_URL point at PostgreSQL and Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from api.schemas import ComparisonCreate
from api.services import Services
from api.services import comparisons as comparison_service
from api.services import teams as team_service
from api.settings import Settings
from worker.launch import start_worker_process
from worker.settings import WorkerSettings
from worker.slots import plan_slots

log = logging.getLogger(__name__)
LOCAL_TEAM = "local"
TOKEN_FILE = "local_token"  # under DATA_DIR, mode 0600: `up` reuses the token instead of minting one per start
WORKER_STOP_SECONDS = 30.0


def local_token(session: Session, *, data_dir: Path) -> str:
    """The local team's token: the saved one if it still authenticates, else a new one (saved for next time)."""
    path = data_dir / TOKEN_FILE
    if path.is_file():
        saved = path.read_text().strip()
        principal = team_service.authenticate(session, token=saved)
        if principal is not None and principal.team_name == LOCAL_TEAM:
            return saved
    created = team_service.create_token(session, team_name=LOCAL_TEAM, admin=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(created.token + "\n")
    return created.token


def submit_demo(services: Services, *, team_id: int) -> list[int]:
    """The shapes clip-vs-dppo comparison (same config and seeds but the loss); returns the run ids."""
    body = ComparisonCreate(name="demo: clip vs dppo", preset="shapes-dppo", variants=comparison_service.CLIP_VS_DPPO)
    with services.session() as session:
        comparison = comparison_service.create_comparison(
            session, queue=services.queue, input_roots=services.settings.INPUT_ROOTS, team_id=team_id, body=body
        )
    return [run.id for run in comparison.runs]


def start_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """One worker subprocess per slot (worker/slots.py: one per GPU, or CPU slots sharing the cores), the first
    with the heartbeat reaper beside it; logs in DATA_DIR/worker.log (worker-N.log for the others)."""
    worker_settings = WorkerSettings(**settings.platform_values())
    slots = plan_slots(
        workers=worker_settings.EMBEDDED_WORKERS,
        torch_threads=worker_settings.WORKER_TORCH_THREADS,
        device=worker_settings.WORKER_DEVICE,
    )
    procs = []
    for index, slot in enumerate(slots):
        slot_settings = worker_settings.model_copy(update={"WORKER_TORCH_THREADS": slot.torch_threads})
        log_file = settings.DATA_DIR / ("worker.log" if index == 0 else f"worker-{index}.log")
        procs.append(start_worker_process(slot_settings, gpu=slot.gpu, reaper=index == 0, log_file=log_file))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], *, timeout: float = WORKER_STOP_SECONDS) -> None:
    """SIGTERM to every worker (Celery warm shutdown: each job checkpoints and stops), SIGKILL after `timeout` s.

    A killed job is not lost: its run is requeued by the reaper and resumes from its last checkpoint next time.
    """
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        os.killpg(proc.pid, signal.SIGTERM)  # each worker runs in its own process group (worker.launch)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_embedded(
    *, host: str | None = None, port: int | None = None, demo: bool = False, echo: Callable[[str], None] = log.info
) -> int:
    """Run until Ctrl-C; `echo` shows the banner and progress (the CLI passes print)."""
    import uvicorn

    from server import create_server
    from store.migrate import upgrade

    settings = Settings()
    host, port = host or settings.API_HOST, port or settings.API_PORT
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    upgrade(settings.DATABASE_URL)
    services = Services.from_settings(settings)
    with services.session() as session:
        token = local_token(session, data_dir=settings.DATA_DIR)
        principal = team_service.authenticate(session, token=token)
    assert principal is not None
    workers = start_workers(settings)
    try:
        demo_runs = submit_demo(services, team_id=principal.team_id) if demo else []
        echo(_banner(settings, host=host, port=port, token=token, demo_runs=demo_runs, workers=len(workers)))
        server = uvicorn.Server(
            uvicorn.Config(create_server(settings, services), host=host, port=port, log_level="warning")
        )
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the previous handlers:
        # make SIGTERM (like Ctrl-C) an exception, so that the worker is stopped below in both cases.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        echo("stopping the workers ...")
        stop_workers(workers)
    echo("stopped")
    return 0


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _banner(settings: Settings, *, host: str, port: int, token: str, demo_runs: list[int], workers: int = 1) -> str:
    url = f"http://{host}:{port}"
    logs = "worker.log" if workers == 1 else f"worker.log, worker-1..{workers - 1}.log"
    lines = [
        f"flowdppo is up (data in {settings.DATA_DIR}; {workers} worker(s), logs: {settings.DATA_DIR / logs})",
        f"  dashboard  {url}/ui",
        f"  REST API   {url}/docs",
        f"  token      {token}   (team '{LOCAL_TEAM}')",
        f"  CLI        export FLOWDPPO_URL={url} FLOWDPPO_TOKEN={token}",
    ]
    if demo_runs:
        lines.append(f"  demo       runs {demo_runs} submitted (clip vs dppo); `flowdppo watch {demo_runs[0]}`")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)
