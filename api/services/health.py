"""Health: can we reach the database."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.schemas import Health


def _version() -> str:
    try:
        return version("flowdppo")
    except PackageNotFoundError:
        return "dev"


def check(session: Session) -> Health:
    try:
        session.execute(text("SELECT 1"))
        ok = True
    except SQLAlchemyError:
        ok = False
    return Health(status="ok" if ok else "degraded", database=ok, version=_version())
