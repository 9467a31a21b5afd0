"""Container health checks of the flowdppo images (docker/Dockerfile, docker-compose.yml): `api` or `worker`.

api:    GET /api/v1/health on this container answers 200.
worker: this container's Celery node answers a ping over the broker. With the prefork pool the worker's main
        process answers while its child trains, so a worker busy for hours stays healthy.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_api() -> None:
    port = os.environ.get("API_PORT", "8000")
    url = f"http://127.0.0.1:{port}/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # raises HTTPError on 4xx/5xx
            status = response.status
    except OSError as err:
        sys.exit(f"{url}: {err}")
    if status != 200:
        sys.exit(f"{url}: HTTP {status}")


def check_worker() -> None:
    # A bare app on the worker's broker with the worker's transport options: a ping drains the broker, and on Redis
    # that re-queues every running job older than this app's visibility timeout (store/broker.py). The settings
    # import only pydantic, so the check stays light and never touches CUDA.
    from celery import Celery

    from worker.settings import WorkerSettings

    settings = WorkerSettings()
    app = Celery(broker=settings.BROKER_URL)
    app.conf.broker_transport_options = settings.broker_transport_options()
    host = socket.gethostname()
    nodes = [name for reply in app.control.ping(timeout=10) for name in reply]
    if not any(name.partition("@")[2] == host for name in nodes):
        sys.exit(f"no Celery node on host {host!r} answered a ping (answers: {nodes})")


if __name__ == "__main__":
    checks = {"api": check_api, "worker": check_worker}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        sys.exit(f"usage: healthcheck.py {{{'|'.join(checks)}}}")
    checks[sys.argv[1]]()
