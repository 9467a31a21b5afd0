"""Runs: validate -> store -> commit -> enqueue; list, get, cancel, delete, evaluate (platform.md "Job semantics")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from api.schemas import EvaluateCreate, RunCreate, RunEventPublic, RunListItem, RunPublic, RunsPublic
from api.services.configs import resolve_eval_config, resolve_train_config
from api.services.errors import ConflictError, InvalidConfigError, NotFoundError, QuotaError, ServiceError
from api.services.queue import TaskQueue
from store import checkpoints as store_checkpoints
from store import lifecycle as store_lifecycle
from store import runs as store_runs
from store.broker import Queue, run_queue
from store.enums import RunKind, RunStatus
from store.models import Run
from store.runs import ANY_RUN, RunFilter
from trainer.config import TrainConfig

_LIST_ITEMS = TypeAdapter(list[RunListItem])  # one validator call per page, not one per row


def get_owned_run(session: Session, *, team_id: int, run_id: int) -> Run:
    """The ownership check, written once: another team's run is indistinguishable from a missing one."""
    run = store_runs.get_run(session, run_id=run_id, team_id=team_id)
    if run is None:
        raise NotFoundError(f"run {run_id} not found")
    return run


def create_run(
    session: Session,
    *,
    queue: TaskQueue,
    input_roots: Sequence[Path],
    team_id: int,
    body: RunCreate,
    reward_hosts: Sequence[str] = (),
    max_queued: int = 0,
) -> RunPublic:
    """Validate the config (InvalidConfigError names the field; files only inside `input_roots`, remote rewards only
    on `reward_hosts`), check the team's queue (`max_queued`; 0 = no cap), store the run, commit, then enqueue."""
    config = resolve_train_config(
        preset=body.preset,
        config=body.config,
        overrides=body.overrides,
        input_roots=input_roots,
        reward_hosts=reward_hosts,
    )
    check_queue_room(session, team_id=team_id, adding=1, max_queued=max_queued)
    run = store_runs.create_run(
        session,
        team_id=team_id,
        config=config.model_dump(mode="json"),
        kind=RunKind.TRAIN,
        name=body.name or body.preset or "",
        tags=body.tags,
        preset=body.preset,
    )
    enqueue(session, queue=queue, run=run)
    return RunPublic.model_validate(run)


def check_queue_room(session: Session, *, team_id: int, adding: int, max_queued: int) -> None:
    """QuotaError (429) when `adding` more runs would take the team past `max_queued` queued runs (0 = no cap).

    A soft cap: two submissions at the same instant may both pass it by a few runs.
    """
    if not max_queued:
        return
    queued = store_runs.count_queued(session, team_id=team_id)
    if queued + adding > max_queued:
        raise QuotaError(
            f"the team has {queued} queued runs and the platform takes at most {max_queued} "
            f"(MAX_QUEUED_RUNS_PER_TEAM); this submission adds {adding}: wait for some to start or cancel them"
        )


def enqueue(session: Session, *, queue: TaskQueue, run: Run) -> None:
    """Send the committed run's job; if the broker refuses, the run fails visibly instead of staying queued."""
    try:
        queue_name = run_queue(run.kind, run.config)
        queue.enqueue_run(run_id=run.id, kind=run.kind, attempt=run.attempt, queue_name=queue_name)
        if queue_name != Queue(run.kind).value:  # spec §12: only a worker hosting that many ranks takes it
            message = f"queued on {queue_name!r}: a worker with {run.config['num_processes']} GPUs or more takes it"
            store_runs.add_event(session, run_id=run.id, message=message)
    except ServiceError as err:
        store_lifecycle.finish_run(session, run_id=run.id, status=RunStatus.FAILED, error=err.message)
        raise


def list_runs(
    session: Session,
    *,
    team_id: int,
    filters: RunFilter = ANY_RUN,
    cursor: str | None = None,
    limit: int = 50,
) -> RunsPublic:
    """Newest first, one page of RunListItem (no configs: get_run has them); pass `next_cursor` back as `cursor`."""
    try:
        rows, next_cursor = store_runs.list_run_rows(
            session, team_id=team_id, filters=filters, cursor=cursor, limit=limit
        )
    except ValueError as err:  # a forged cursor
        raise InvalidConfigError(
            [{"loc": ["query"], "msg": str(err), "type": "value_error", "input": cursor}]
        ) from err
    data = _LIST_ITEMS.validate_python([row._asdict() for row in rows])  # dicts: half the time of from_attributes
    return RunsPublic(data=data, count=len(data), next_cursor=next_cursor)


def get_run(session: Session, *, team_id: int, run_id: int) -> RunPublic:
    return RunPublic.model_validate(get_owned_run(session, team_id=team_id, run_id=run_id))


def cancel_run(session: Session, *, run: Run, queue: TaskQueue | None = None) -> RunPublic:
    """A queued run is cancelled at once (its job is revoked, and skipped by a worker that missed the revoke); a
    running one stops after its current step."""
    was_queued = run.status == RunStatus.QUEUED
    updated = store_lifecycle.request_cancel(session, run_id=run.id, team_id=run.team_id)
    if updated is None:
        raise NotFoundError(f"run {run.id} not found")
    if was_queued and updated.status == RunStatus.CANCELLED and queue is not None:
        queue.revoke_run(run_id=updated.id, attempt=updated.attempt)
    return RunPublic.model_validate(updated)


def delete_run(session: Session, *, run: Run, data_dir: str) -> None:
    """Delete a finished or queued run with its evaluations and files; a running run must be cancelled first."""
    if run.status == RunStatus.QUEUED:
        store_lifecycle.request_cancel(session, run_id=run.id)  # its job, if delivered later, finds no run and skips
    try:
        store_runs.delete_run(session, run_id=run.id, data_dir=data_dir, team_id=run.team_id)
    except store_runs.RunActiveError as err:
        raise ConflictError(str(err)) from err


def list_events(session: Session, *, run: Run, after_id: int | None = None) -> list[RunEventPublic]:
    return [
        RunEventPublic.model_validate(e) for e in store_runs.list_events(session, run_id=run.id, after_id=after_id)
    ]


def evaluate(
    session: Session,
    *,
    queue: TaskQueue,
    input_roots: Sequence[Path],
    run: Run,
    body: EvaluateCreate,
    max_queued: int = 0,
) -> RunPublic:
    """An eval run (kind 'eval', parent_run_id = run) of one of the run's checkpoints, or of the base model."""
    if run.kind != RunKind.TRAIN:
        raise ConflictError(f"run {run.id} is an evaluation; evaluate its parent run {run.parent_run_id} instead")
    if body.checkpoint_id is not None:
        checkpoint = store_checkpoints.get_checkpoint(session, checkpoint_id=body.checkpoint_id)
        if checkpoint is None or checkpoint.run_id != run.id:
            raise NotFoundError(f"checkpoint {body.checkpoint_id} not found in run {run.id}")
    train = TrainConfig.model_validate(run.config)
    config = resolve_eval_config(
        train=train, overrides=body.overrides, input_roots=input_roots, loc=("body", "overrides")
    )
    check_queue_room(session, team_id=run.team_id, adding=1, max_queued=max_queued)
    target = f"checkpoint {body.checkpoint_id}" if body.checkpoint_id is not None else "base model"
    eval_run = store_runs.create_run(
        session,
        team_id=run.team_id,
        config=config.model_dump(mode="json"),
        kind=RunKind.EVAL,
        name=body.name or f"eval of run {run.id} ({target})",
        tags=list(run.tags),
        parent_run_id=run.id,
        checkpoint_id=body.checkpoint_id,
        comparison_id=None,
    )
    enqueue(session, queue=queue, run=eval_run)
    return RunPublic.model_validate(eval_run)
