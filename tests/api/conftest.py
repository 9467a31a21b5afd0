"""Fixtures of the API tests: real databases (SQLite file and PostgreSQL schema), a real filesystem broker, teams.

Every route test runs on both databases. A database is migrated once per session; tests stay independent by
creating their own teams (every route is team-scoped). With CI=true a missing PostgreSQL is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from factories import TeamToken, make_team_token
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from api.services import Services
from api.services.queue import TaskQueue, make_celery_app
from api.settings import Settings
from store import runs as store_runs
from store.migrate import upgrade
from store.session import make_sessionmaker

PG_URL = os.environ.get("DATABASE_TEST_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_schema_url() -> tuple[str, sa.Engine, str]:
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            schema = f"api_{uuid.uuid4().hex[:12]}"
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as err:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {err}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", admin, schema


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'api.db'}"
        upgrade(url)
        yield url
        return
    url, admin, schema = _postgres_schema_url()
    upgrade(url)
    yield url
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


class CommitCheckingQueue(TaskQueue):
    """The real queue, but every send first checks from a second session that the run is committed."""

    def __init__(self, app: Any, services_ref: list[Services]):
        super().__init__(app)
        self.services_ref = services_ref
        self.sent: list[tuple[int, str]] = []

    def enqueue_run(self, *, run_id: int, kind: str, **options: Any) -> None:
        with self.services_ref[0].session() as fresh:
            assert store_runs.get_run(fresh, run_id=run_id) is not None, f"run {run_id} enqueued before its commit"
        super().enqueue_run(run_id=run_id, kind=kind, **options)
        self.sent.append((run_id, kind))


@pytest.fixture(scope="session")
def services(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings(
        DATA_DIR=data_dir, DATABASE_URL=database_url, BROKER_URL="filesystem://", SSE_POLL_SECONDS=0.05
    )
    ref: list[Services] = []
    queue = CommitCheckingQueue(make_celery_app(settings.BROKER_URL, str(settings.broker_folder)), ref)
    svc = Services(settings=settings, session_factory=make_sessionmaker(database_url), queue=queue)
    ref.append(svc)
    yield svc
    svc.close()


@pytest.fixture(scope="session")
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services.settings, services)) as c:
        yield c


@pytest.fixture
def session(services: Services) -> Iterator[Session]:
    with services.session() as s:
        yield s


@pytest.fixture
def team(session: Session) -> TeamToken:
    return make_team_token(session)


@pytest.fixture
def other_team(session: Session) -> TeamToken:
    return make_team_token(session)
