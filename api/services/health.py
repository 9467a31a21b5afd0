"""Health: can we reach the database and the broker."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from celery import Celery
from kombu.exceptions import KombuError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.schemas import Health


def _version() -> str:
    try:
        return version("flowdppo")
    except PackageNotFoundError:
        return "dev"


def broker_error(app: Celery, *, timeout: float = 2.0) -> str | None:
    """None when the broker accepts a connection, else what went wrong, naming the broker (password masked)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except (KombuError, OSError) as err:
        return f"the broker {app.connection_for_write().as_uri()} does not answer: {err}"
    return None


def check(session: Session, *, broker: Celery) -> Health:
    """'ok' when the database and the broker answer; 'degraded' names the one that does not (HTTP 503 if it is the
    database, which every route needs; with the broker down runs can still be read, not submitted)."""
    try:
        session.execute(text("SELECT 1"))
        database_ok = True
    except SQLAlchemyError:
        database_ok = False
    broker_problem = broker_error(broker)
    return Health(
        status="ok" if database_ok and broker_problem is None else "degraded",
        database=database_ok,
        broker=broker_problem is None,
        broker_error=broker_problem,
        version=_version(),
    )
