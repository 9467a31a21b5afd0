"""`flowdppo up`: the whole platform on one machine (platform.md "Embedded"): migrations, a local team and token,
one worker subprocess (with the heartbeat reaper), and the API + dashboard (server.py) in this process. Ctrl-C stops
it all. A composition module beside server.py: the one place besides it that knows api/ and worker/ both.

The same code runs distributed when DATABASE_URL / BROKER_URL point at PostgreSQL and Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
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


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    worker_settings = WorkerSettings(**settings.platform_values())
    return start_worker_process(worker_settings, reaper=True, log_file=settings.DATA_DIR / "worker.log")


def stop_worker(proc: subprocess.Popen[bytes], *, timeout: float = WORKER_STOP_SECONDS) -> None:
    """SIGTERM (Celery warm shutdown: the job checkpoints and stops), then SIGKILL after `timeout` seconds.

    A killed job is not lost: its run is requeued by the reaper and resumes from its last checkpoint next time.
    """
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the worker runs in its own process group (worker.launch)
    try:
        proc.wait(timeout=timeout)
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
    worker = start_worker(settings)
    try:
        demo_runs = submit_demo(services, team_id=principal.team_id) if demo else []
        echo(_banner(settings, host=host, port=port, token=token, demo_runs=demo_runs))
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
        echo("stopping the worker ...")
        stop_worker(worker)
    echo("stopped")
    return 0


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _banner(settings: Settings, *, host: str, port: int, token: str, demo_runs: list[int]) -> str:
    url = f"http://{host}:{port}"
    lines = [
        f"flowdppo is up (data in {settings.DATA_DIR}; worker log: {settings.DATA_DIR / 'worker.log'})",
        f"  dashboard  {url}/ui",
        f"  REST API   {url}/docs",
        f"  token      {token}   (team '{LOCAL_TEAM}')",
        f"  CLI        export FLOWDPPO_URL={url} FLOWDPPO_TOKEN={token}",
    ]
    if demo_runs:
        lines.append(f"  demo       runs {demo_runs} submitted (clip vs dppo); `flowdppo watch {demo_runs[0]}`")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)
