"""Engines and sessions from a URL: SQLite (embedded, WAL, shared by API and worker processes) or PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, echo: bool = False, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite gets WAL (readers never block the writer), a busy timeout and foreign keys.

    The API and the worker write the same SQLite file from different processes. A writer waits for the lock under
    the busy timeout, except when its transaction *read first*: upgrading a stale read snapshot fails with
    SQLITE_BUSY at once. So every store write function starts a fresh transaction (`begin_write`).
    """
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(sa_url, echo=echo, **kwargs)

    connect_args = {
        "check_same_thread": False,
        "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        **kwargs.pop("connect_args", {}),
    }
    engine = create_engine(sa_url, echo=echo, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy (below) emit BEGIN, not the sqlite3 module
        cursor = dbapi_conn.cursor()
        if sa_url.database and sa_url.database != ":memory:":
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def begin_write(session: Session) -> None:
    """Commit whatever transaction the session has open, so the caller's write starts a new one (see make_engine).

    Store write functions commit anyway; this only moves the commit of a preceding read to before the write.
    """
    if session.in_transaction():
        session.commit()


def make_sessionmaker(engine_or_url: Engine | str) -> sessionmaker[Session]:
    """A session factory; objects stay usable after commit (expire_on_commit=False) so callers can return them."""
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    return sessionmaker(bind=engine, expire_on_commit=False)
