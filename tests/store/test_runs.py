"""Runs: creation, team scoping, filters and pagination, and the race-free state changes of job semantics."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from store import artifacts, checkpoints, lifecycle, metrics, runs, teams
from store.models import Run, utcnow
from store.runs import RunFilter
from store.session import make_sessionmaker

STALE = timedelta(seconds=60)
TRAIN = RunFilter(kind="train")
STATUSES = ("queued", "cancelled")


@pytest.fixture
def team(session):
    return teams.create_team(session, name="team")


def _run(session, team, **kw):
    return runs.create_run(session, team_id=team.id, config={"steps": 5, "loss": "dppo"}, **kw)


def test_create_get_and_team_scoping(session, team):
    other = teams.create_team(session, name="other")
    run = _run(session, team, name="a", tags=["x"], preset="shapes-dppo")
    assert (run.status, run.kind, run.total_steps, run.attempt, run.progress) == ("queued", "train", 5, 1, 0.0)
    assert run.created_at.tzinfo is not None
    assert runs.get_run(session, run_id=run.id, team_id=team.id).name == "a"
    assert runs.get_run(session, run_id=run.id, team_id=other.id) is None
    assert runs.get_run(session, run_id=run.id) is not None  # internal callers
    assert [e.message for e in runs.list_events(session, run_id=run.id)] == ["queued (train)"]
    with pytest.raises(ValueError, match="kind"):
        runs.create_run(session, team_id=team.id, config={}, kind="bogus")


def test_list_filters_and_cursor_pagination(session, team):
    other = teams.create_team(session, name="other")
    made = [_run(session, team, tags=["even"] if i % 2 == 0 else ["odd", "x"]) for i in range(7)]
    _run(session, other, tags=["even"])
    evaluation = _run(session, team, kind="eval", parent_run_id=made[0].id)
    lifecycle.request_cancel(session, run_id=made[1].id)

    page, cursor, seen = *runs.list_runs(session, team_id=team.id, filters=TRAIN, limit=3), []
    seen += [r.id for r in page]
    while cursor:
        page, cursor = runs.list_runs(session, team_id=team.id, filters=TRAIN, cursor=cursor, limit=3)
        seen += [r.id for r in page]
    assert seen == sorted((r.id for r in made), reverse=True)  # newest first, nothing missing or repeated

    evens, _ = runs.list_runs(session, team_id=team.id, filters=RunFilter(tag="even", kind="train"))
    assert {r.id for r in evens} == {made[i].id for i in (0, 2, 4, 6)}
    assert len(runs.list_runs(session, team_id=team.id, filters=RunFilter(tag="odd"))[0]) == 3
    cancelled, _ = runs.list_runs(session, team_id=team.id, filters=RunFilter(status="cancelled"))
    assert [r.id for r in cancelled] == [made[1].id]
    queued_or_cancelled = [runs.list_runs(session, team_id=team.id, filters=RunFilter(status=s))[0] for s in STATUSES]
    assert sum(map(len, queued_or_cancelled)) == 8
    children, _ = runs.list_runs(session, team_id=team.id, filters=RunFilter(parent_run_id=made[0].id))
    assert [r.id for r in children] == [evaluation.id]
    with pytest.raises(ValueError):
        runs.list_runs(session, team_id=team.id, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="status must be one of"):
        runs.list_runs(session, team_id=team.id, filters=RunFilter(status="bogus"))


def test_claim_heartbeat_finish(session, team):
    run = _run(session, team)
    claimed = lifecycle.claim_run(session, run_id=run.id, worker="w1@host", stale_after=STALE)
    assert (claimed.status, claimed.worker) == ("running", "w1@host") and claimed.started_at is not None
    # a second worker with a fresh heartbeat in place gets nothing; the same worker (a redelivery) may re-claim,
    # as a new attempt
    assert lifecycle.claim_run(session, run_id=run.id, worker="w2@host", stale_after=STALE) is None
    assert lifecycle.claim_run(session, run_id=run.id, worker="w1@host", stale_after=STALE).attempt == 2

    beat = lifecycle.heartbeat(session, run_id=run.id, attempt=2, step=2, progress=0.4)
    assert beat.owned and not beat.cancel_requested and not beat.should_stop
    refreshed = runs.get_run(session, run_id=run.id)
    assert (refreshed.step, refreshed.progress) == (2, 0.4)
    assert not lifecycle.heartbeat(session, run_id=run.id, attempt=1).owned  # another attempt's worker is fenced off

    assert lifecycle.finish_run(session, run_id=run.id, status="succeeded", attempt=2)
    assert not lifecycle.finish_run(session, run_id=run.id, status="failed", error="late")  # first final status wins
    done = runs.get_run(session, run_id=run.id)
    assert (done.status, done.progress, done.error) == ("succeeded", 1.0, None) and done.finished_at is not None
    assert lifecycle.claim_run(session, run_id=run.id, worker="w1@host", stale_after=STALE) is None
    with pytest.raises(ValueError):
        lifecycle.finish_run(session, run_id=run.id, status="running")


def test_stale_running_run_can_be_claimed_by_another_worker(session, team):
    run = _run(session, team)
    lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE)
    session.query(Run).filter_by(id=run.id).update({"heartbeat_at": utcnow() - timedelta(minutes=5)})
    session.commit()
    assert lifecycle.claim_run(session, run_id=run.id, worker="w2", stale_after=STALE).worker == "w2"


def test_cancel_queued_never_starts_and_running_gets_flag(session, team):
    queued = _run(session, team)
    cancelled = lifecycle.request_cancel(session, run_id=queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert lifecycle.claim_run(session, run_id=queued.id, worker="w", stale_after=STALE) is None

    running = _run(session, team)
    lifecycle.claim_run(session, run_id=running.id, worker="w", stale_after=STALE)
    assert not lifecycle.is_cancel_requested(session, run_id=running.id)
    after = lifecycle.request_cancel(session, run_id=running.id)
    assert after.status == "running" and after.cancel_requested
    assert lifecycle.is_cancel_requested(session, run_id=running.id)
    assert lifecycle.heartbeat(session, run_id=running.id, attempt=1).should_stop

    assert lifecycle.request_cancel(session, run_id=running.id, team_id=team.id + 999) is None
    assert lifecycle.is_cancel_requested(session, run_id=123456)  # a deleted run must stop too


def test_reaper_bookkeeping_requeues_then_fails(session, team):
    run = _run(session, team, max_attempts=2)
    lifecycle.claim_run(session, run_id=run.id, worker="w", stale_after=STALE)
    assert lifecycle.find_stale_runs(session, older_than=STALE) == []
    session.query(Run).filter_by(id=run.id).update({"heartbeat_at": utcnow() - timedelta(minutes=5)})
    session.commit()
    assert [r.id for r in lifecycle.find_stale_runs(session, older_than=STALE)] == [run.id]

    requeued = lifecycle.requeue_run(session, run_id=run.id, attempt=1, reason="heartbeat lost")
    assert (requeued.status, requeued.attempt, requeued.worker) == ("queued", 2, None)
    assert lifecycle.requeue_run(session, run_id=run.id, attempt=1, reason="again") is None  # a second reaper: no-op

    lifecycle.claim_run(session, run_id=run.id, worker="w2", stale_after=STALE)
    failed = lifecycle.requeue_run(session, run_id=run.id, attempt=2, reason="heartbeat lost")
    assert failed.status == "failed" and "heartbeat lost" in failed.error and failed.finished_at is not None
    levels = [(e.level, e.message) for e in runs.list_events(session, run_id=run.id)]
    assert any(level == "warning" and "requeued" in m for level, m in levels)
    assert levels[-1][0] == "error"


def test_lost_run_with_pending_cancel_becomes_cancelled(session, team):
    run = _run(session, team)
    lifecycle.claim_run(session, run_id=run.id, worker="w", stale_after=STALE)
    lifecycle.request_cancel(session, run_id=run.id)
    assert lifecycle.requeue_run(session, run_id=run.id, attempt=1, reason="lost").status == "cancelled"


def test_delete_run_removes_rows_children_and_files(session, team, tmp_path):
    run = _run(session, team)
    child = _run(session, team, kind="eval", parent_run_id=run.id)
    for r in (run, child):
        (artifacts.run_dir(tmp_path, r.id) / "f.txt").write_text("x")
    metrics.append_metrics(session, run_id=run.id, step=1, values={"a": 1.0})
    ckpt = checkpoints.add_checkpoint(session, run_id=run.id, step=1, path=f"runs/{run.id}/checkpoints/step_000001")
    lifecycle.claim_run(session, run_id=child.id, worker="w", stale_after=STALE)
    with pytest.raises(runs.RunActiveError):
        runs.delete_run(session, run_id=run.id, data_dir=tmp_path)
    lifecycle.finish_run(session, run_id=child.id, status="failed", error="x")
    assert not runs.delete_run(session, run_id=run.id, data_dir=tmp_path, team_id=team.id + 999)
    assert runs.delete_run(session, run_id=run.id, data_dir=tmp_path, team_id=team.id)
    session.expunge_all()
    assert runs.get_run(session, run_id=run.id) is None and runs.get_run(session, run_id=child.id) is None
    assert metrics.read_points(session, run_id=run.id) == []
    assert checkpoints.get_checkpoint(session, checkpoint_id=ckpt.id) is None
    assert not (tmp_path / "runs" / str(run.id)).exists() and not (tmp_path / "runs" / str(child.id)).exists()


def test_active_runs(session, team):
    a, _b = _run(session, team), _run(session, team)
    lifecycle.claim_run(session, run_id=a.id, worker="gpu0@h", stale_after=STALE)
    assert [(r.id, r.worker) for r in runs.active_runs(session)] == [(a.id, "gpu0@h")]


def test_reclaiming_a_running_run_is_a_new_attempt_until_max_attempts(session, team):
    run = _run(session, team, max_attempts=2)
    assert lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE).attempt == 1
    # a redelivery to the same worker (its child was killed): a new attempt, the old one fenced off
    again = lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE)
    assert (again.status, again.attempt) == ("running", 2)
    assert not lifecycle.heartbeat(session, run_id=run.id, attempt=1).owned
    # the third delivery would exceed max_attempts: the run fails instead of being claimed forever
    assert lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE) is None
    failed = runs.get_run(session, run_id=run.id)
    assert failed.status == "failed" and "2 attempts" in failed.error and failed.finished_at is not None
    assert runs.list_events(session, run_id=run.id)[-1].level == "error"


def test_stale_takeover_by_another_worker_fences_off_the_old_one(session, team):
    run = _run(session, team)
    lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE)
    session.query(Run).filter_by(id=run.id).update({"heartbeat_at": utcnow() - timedelta(minutes=5)})
    session.commit()
    taken = lifecycle.claim_run(session, run_id=run.id, worker="w2", stale_after=STALE)
    assert (taken.worker, taken.attempt) == ("w2", 2)
    assert not lifecycle.heartbeat(session, run_id=run.id, attempt=1).owned
    assert not lifecycle.finish_run(session, run_id=run.id, status="failed", error="late", attempt=1)


def test_fenced_write_lands_only_while_the_attempt_owns_the_run(session, team):
    run = _run(session, team)
    lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE)
    with lifecycle.fenced_write(session, run_id=run.id, attempt=1, step=1, progress=0.25) as writes:
        assert writes is not None
        metrics.append_metrics(writes, run_id=run.id, step=1, values={"loss": 1.0})  # commits a savepoint only
        runs.add_event(writes, run_id=run.id, message="checkpoint at step 1")
    session.expire_all()
    assert (runs.get_run(session, run_id=run.id).step, runs.get_run(session, run_id=run.id).progress) == (1, 0.25)
    with pytest.raises(RuntimeError), lifecycle.fenced_write(session, run_id=run.id, attempt=1) as writes:
        metrics.append_metrics(writes, run_id=run.id, step=2, values={"loss": 2.0})
        raise RuntimeError("the writer failed half-way")  # nothing of this transaction lands
    lifecycle.requeue_run(session, run_id=run.id, attempt=1, reason="test")
    lifecycle.claim_run(session, run_id=run.id, worker="w2", stale_after=STALE)
    with lifecycle.fenced_write(session, run_id=run.id, attempt=1) as writes:
        assert writes is None  # attempt 2 runs it now
    with lifecycle.fenced_write(session, run_id=run.id, attempt=2) as writes:
        metrics.append_metrics(writes, run_id=run.id, step=3, values={"loss": 3.0})
    session.rollback()
    assert [p.step for p in metrics.read_points(session, run_id=run.id, keys=["loss"])] == [1, 3]
    assert "checkpoint at step 1" in [e.message for e in runs.list_events(session, run_id=run.id)]


def test_a_takeover_waits_for_a_fenced_write_in_progress(session, team, db_engine):
    """The fence holds the run row until its writes commit: a takeover lands after them, never between."""
    run = _run(session, team)
    lifecycle.claim_run(session, run_id=run.id, worker="w1", stale_after=STALE)
    taken = threading.Event()

    def take_over() -> None:
        with make_sessionmaker(db_engine)() as other:
            lifecycle.requeue_run(other, run_id=run.id, attempt=1, reason="test")
        taken.set()

    with lifecycle.fenced_write(session, run_id=run.id, attempt=1) as writes:
        metrics.append_metrics(writes, run_id=run.id, step=1, values={"loss": 1.0})
        thread = threading.Thread(target=take_over)
        thread.start()
        assert not taken.wait(0.5), "the takeover must wait for the fenced transaction"
        metrics.append_metrics(writes, run_id=run.id, step=2, values={"loss": 2.0})
    thread.join(timeout=30)
    assert taken.is_set()
    session.rollback()
    assert [p.step for p in metrics.read_points(session, run_id=run.id, keys=["loss"])] == [1, 2]
    assert runs.get_run(session, run_id=run.id).attempt == 2
