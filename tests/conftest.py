"""Shared database and broker fixtures: real SQLite files, real PostgreSQL schemas, a private Redis database.

Isolation: a SQLite database is a fresh copy of a migrated file per test; PostgreSQL gets one migrated schema per
test session (URL option search_path) truncated after each test, or a fresh schema per test for tests that start
other processes; Redis gets a database number nobody else holds for the session. With CI=true a missing
PostgreSQL or Redis fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.migrate import upgrade
from store.models import Base
from store.session import make_engine, make_sessionmaker

PG_URL = os.environ.get("DATABASE_TEST_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_LOCK_KEY = "flowdppo:tests:lock"


def unavailable(message: str) -> None:
    """Skip locally, fail in CI (where the services are part of the contract)."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


# --- PostgreSQL ---


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An engine on DATABASE_TEST_URL's database, used to create and drop test schemas."""
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as err:
        engine.dispose()
        unavailable(f"PostgreSQL not reachable at {PG_URL}: {err}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def make_pg_schema(pg_admin: sa.Engine) -> Iterator[Callable[[], str]]:
    """Factory: a new, migrated schema; returns a URL whose connections use it. Dropped at session end."""
    created: list[str] = []

    def make() -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        created.append(schema)
        sep = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
        upgrade(url)
        return url

    yield make
    with pg_admin.connect() as conn:
        for schema in created:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session")
def pg_shared(make_pg_schema: Callable[[], str]) -> Iterator[tuple[str, sa.Engine]]:
    url = make_pg_schema()
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def _truncate_all(engine: sa.Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


# --- SQLite ---


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; tests copy it (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:  # move everything into the main file, so a plain copy is complete
        conn.execute("PRAGMA journal_mode=DELETE")
    return path


def fresh_sqlite_url(template: Path, folder: Path) -> str:
    path = folder / "flowdppo.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


# --- per-test databases ---


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[sa.Engine]:
    """A migrated, empty database of each kind, isolated from every other test."""
    if request.param == "sqlite":
        engine = make_engine(fresh_sqlite_url(sqlite_template, tmp_path))
        yield engine
        engine.dispose()
        return
    _url, engine = request.getfixturevalue("pg_shared")
    try:
        yield engine
    finally:
        _truncate_all(engine)


@pytest.fixture
def session(db_engine: sa.Engine) -> Iterator[Session]:
    with make_sessionmaker(db_engine)() as s:
        yield s


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite file of this test's own."""
    return fresh_sqlite_url(sqlite_template, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def process_db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A database URL other processes (Celery workers) can open: a SQLite file copy or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return fresh_sqlite_url(sqlite_template, tmp_path)
    return request.getfixturevalue("make_pg_schema")()


# --- Redis ---


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_TEST_URL's server with a database number no other test session holds (lock key), flushed after."""
    import redis

    base = REDIS_URL.rsplit("/", 1)[0] if REDIS_URL.rsplit("/", 1)[-1].isdigit() else REDIS_URL.rstrip("/")
    token = uuid.uuid4().hex
    try:
        redis.Redis.from_url(f"{base}/0", socket_timeout=2).ping()
    except redis.exceptions.RedisError as err:
        unavailable(f"Redis not reachable at {REDIS_URL}: {err}")
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.set(REDIS_LOCK_KEY, token, nx=True, ex=3600) and client.dbsize() == 1:
            break
        if client.get(REDIS_LOCK_KEY) == token.encode():
            client.delete(REDIS_LOCK_KEY)
    else:
        unavailable("no free Redis database number (1-15) for the tests")
    yield f"{base}/{db}"
    client.flushdb()
