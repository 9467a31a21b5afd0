"""Migrations create the whole schema from empty on both databases, match the models, and are idempotent."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from store.migrate import current_revision, upgrade
from store.models import Base
from store.session import make_engine


def _check_schema(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
            # the first migration creates exactly what the models declare (types, indices, constraints)
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_from_empty_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'new.db'}"
    assert current_revision(url) is None
    upgrade(url)
    upgrade(url)  # idempotent
    assert current_revision(url) == "0001"
    _check_schema(url)


def test_upgrade_from_empty_postgresql(pg_admin):
    import uuid

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        base = pg_admin.url.render_as_string(hide_password=False)
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
        assert current_revision(url) is None
        upgrade(url)
        upgrade(url)
        assert current_revision(url) == "0001"
        _check_schema(url)
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_cli_upgrade(tmp_path, monkeypatch):
    from store.cli import _upgrade

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", url)

    class Args:
        url = None
        revision = "head"

    assert _upgrade(Args()) == 0
    assert current_revision(url) == "0001"
