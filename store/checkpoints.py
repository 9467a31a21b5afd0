"""Checkpoint rows: which resumable states a run has written (files live under runs/<id>/checkpoints/)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Checkpoint
from store.session import begin_write


def add_checkpoint(session: Session, *, run_id: int, step: int, path: str) -> Checkpoint:
    """Record a checkpoint (path relative to the data folder); a rewrite of the same step keeps its id."""
    begin_write(session)
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]
    stmt = insert(Checkpoint).values(run_id=run_id, step=step, path=path)
    stmt = stmt.on_conflict_do_update(index_elements=["run_id", "step"], set_={"path": stmt.excluded.path})
    session.execute(stmt)
    session.commit()
    query = select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step)
    return session.scalars(query.execution_options(populate_existing=True)).one()


def list_checkpoints(session: Session, *, run_id: int) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step)))


def latest_checkpoint(session: Session, *, run_id: int) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step.desc()).limit(1)
    return session.scalars(query).first()


def get_checkpoint(session: Session, *, checkpoint_id: int, run_id: int | None = None) -> Checkpoint | None:
    """The checkpoint, or None if missing or (with run_id) belonging to another run."""
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or (run_id is not None and checkpoint.run_id != run_id):
        return None
    return checkpoint
