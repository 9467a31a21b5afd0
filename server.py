"""The composition root of the web server: the REST app (api/) with the dashboard (ui/) mounted at /ui on the same
port, and the commands that serve it: `flowdppo api` (the server alone) and `flowdppo up` (embedded mode, embedded.py).

The one place that knows both api/ and ui/: api.main.create_app builds the REST app only, ui.app mounts onto it.
Heavy imports (FastAPI, Gradio, uvicorn) happen inside functions, so the `flowdppo` CLI starts fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.services import Services
    from api.settings import Settings

APP_FACTORY = "server:create_server"  # for uvicorn, which builds the app in each server process


def create_server(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The REST API under /api/v1 and the dashboard at /ui (/ redirects there), for `settings` (default: env)."""
    from fastapi.responses import RedirectResponse

    from api.main import create_app
    from api.services import Services
    from api.settings import Settings
    from ui.app import UI_PATH, mount_dashboard

    settings = settings or Settings()
    services = services or Services.from_settings(settings)
    app = create_app(settings, services)
    mount_dashboard(app, services)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(UI_PATH)

    return app


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("api", help="Serve the REST API (and the dashboard at /ui) with uvicorn.")
    p.add_argument("--host", default=None, help="Default: API_HOST (127.0.0.1).")
    p.add_argument("--port", type=int, default=None, help="Default: API_PORT (8000).")
    p.add_argument("--workers", type=int, default=1, help="Server processes sharing the port (e.g. one per core).")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_api)

    p = subparsers.add_parser("up", help="Embedded mode: API, dashboard and workers on this machine (SQLite).")
    p.add_argument("--host", default=None, help="Default: API_HOST (127.0.0.1).")
    p.add_argument("--port", type=int, default=None, help="Default: API_PORT (8000).")
    p.add_argument("--demo", action="store_true", help="Also submit the shapes-clip vs shapes-dppo comparison.")
    p.set_defaults(handler=_up)


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.settings import Settings

    settings = Settings()
    host, port = args.host or settings.API_HOST, args.port or settings.API_PORT
    if args.workers <= 1:
        uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, log_level=args.log_level)
        return 0
    _serve_workers(host, port, args.workers, args.log_level)
    return 0


def _serve_workers(host: str, port: int, workers: int, log_level: str) -> None:
    """`workers` uvicorn processes accepting on one listening socket, made here rather than by uvicorn.

    uvicorn's own --workers socket is created without proto=IPPROTO_TCP, so asyncio never sets TCP_NODELAY on the
    connections it accepts: every response (headers, then body) then waits on the client's delayed ACK, ~40 ms.
    """
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(APP_FACTORY, factory=True, host=host, port=port, workers=workers, log_level=log_level)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()


def _up(args: argparse.Namespace) -> int:
    from embedded import run_embedded

    return run_embedded(host=args.host, port=args.port, demo=args.demo, echo=lambda text: print(text, flush=True))
