"""Migrations create the whole schema from empty on both databases, match the models, and are idempotent."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from store.migrate import current_revision, upgrade
from store.models import Base
from store.session import make_engine

HEAD = "0004"


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
    assert current_revision(url) == HEAD
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
        assert current_revision(url) == HEAD
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
    assert current_revision(url) == HEAD


def _pg_schema_url(pg_admin, schema: str) -> str:
    base = pg_admin.url.render_as_string(hide_password=False)
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def _upgrade_keeps_rows(url: str) -> None:
    """0001 -> head on a database with a comparison and its run's points: the rows survive, the new columns are
    NULL, and 0004 fills the metric blocks from the points (as append_metrics would have)."""
    upgrade(url, "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO teams (id, name, created_at) VALUES (1, 't', CURRENT_TIMESTAMP)")
            conn.exec_driver_sql(
                "INSERT INTO comparisons (id, team_id, name, base_config, variants, created_at) "
                "VALUES (1, 1, 'c', '{}', '[]', CURRENT_TIMESTAMP)"
            )
            conn.exec_driver_sql(
                "INSERT INTO runs (id, team_id, kind, status, name, tags, config, created_at, step, total_steps, "
                "progress, attempt, max_attempts, cancel_requested, comparison_id, variant) VALUES (1, 1, 'train', "
                "'queued', 'r', '[]', '{}', CURRENT_TIMESTAMP, 0, 1, 0, 1, 3, false, 1, 'dppo')"
            )
            for step in range(-3, 26):  # blocks -1 (steps -9..0), 0 (1..10), 1 and 2 (21..25)
                value = "NULL" if step == 5 else str(step % 7)
                conn.exec_driver_sql(
                    f"INSERT INTO metrics (id, run_id, key, step, value, wall_time) "
                    f"VALUES ({step + 10}, 1, 'k', {step}, {value}, CURRENT_TIMESTAMP)"
                )
        upgrade(url)
        assert current_revision(url) == HEAD
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT variant, seed FROM runs").one() == ("dppo", None)
            assert conn.exec_driver_sql("SELECT name, seeds, grid FROM comparisons").one() == ("c", None, None)
            blocks = "SELECT block, last_step, last_value, vmin, vmax FROM metric_blocks ORDER BY block"
            assert [tuple(r) for r in conn.exec_driver_sql(blocks)] == [
                (-1, 0, 0.0, 0.0, 6.0),
                (0, 10, 3.0, 0.0, 6.0),
                (1, 20, 6.0, 0.0, 6.0),
                (2, 25, 4.0, 0.0, 4.0),
            ]
    finally:
        engine.dispose()
    _check_schema(url)


def test_sweep_columns_added_to_existing_rows_sqlite(tmp_path):
    _upgrade_keeps_rows(f"sqlite:///{tmp_path / 'old.db'}")


def test_sweep_columns_added_to_existing_rows_postgresql(pg_admin):
    import uuid

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        _upgrade_keeps_rows(_pg_schema_url(pg_admin, schema))
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
