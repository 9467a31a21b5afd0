"""Queued runs whose job message is gone from the broker are sent again (a Redis restarted empty, a message file
deleted): the database, not the broker, is the truth about runs (platform.md "Broker facts").

The reaper (worker/reaper.py) looks at the broker's queues each pass: a run that is 'queued' in the database while
no message for it waits in any queue is noted, and re-sent once it has been missing for `after` seconds in a row
(BROKER_RESEND_AFTER_SECONDS; the delay lets a message that a worker just took reach its claim, and a run just
committed by the API reach the broker). Sending twice is harmless: store.lifecycle.claim_run only starts a queued
run, so a second message for a run that already started or finished is skipped with one query.

What counts as waiting: on Redis a message in a queue's list (one delivered to a worker but not acknowledged sits in
the `unacked` hash: when its run still says 'queued' long after, that worker is gone, and the message would only come
back after BROKER_VISIBILITY_TIMEOUT); with the filesystem transport a message file in the queue folder. Other
brokers cannot be listed here: nothing is re-sent on them (the reaper still requeues lost running runs).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from store import runs
from store.broker import TASK_NAMES
from store.enums import RunStatus
from store.models import Run

log = logging.getLogger(__name__)

Enqueue = Callable[[int, str, int], None]  # (run_id, kind, attempt) -> sends the job


def message_run_id(raw: bytes | str) -> int | None:
    """The run id of one of the platform's job messages (kombu's JSON envelope, Celery protocol 2), else None."""
    try:
        payload = json.loads(raw)
        if payload.get("headers", {}).get("task") not in TASK_NAMES.values():
            return None
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]  # protocol 2 body: [args, kwargs, embed]
        return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def waiting_run_ids(
    app: Celery, *, broker_folder: Path | None = None, extra_queues: Iterable[str] = ()
) -> set[int] | None:
    """Ids of the runs with a job message waiting in one of `app`'s queues (and `extra_queues`: the train-w<W> queues
    of runs of several ranks, spec §12); None when this broker cannot be listed.

    Raises the broker's connection error when it is down (the caller skips that pass).
    """
    queues = list(dict.fromkeys([*(q.name for q in app.conf.task_queues or []), *extra_queues]))
    url = app.conf.broker_url or ""
    if url.startswith("filesystem"):
        folder = Path(app.conf.broker_transport_options.get("data_folder_out") or (broker_folder or Path()) / "out")
        return {rid for rid in map(message_run_id, _message_files(folder, queues)) if rid is not None}
    if url.startswith(("redis", "rediss", "sentinel")):
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            keys = [channel._q_for_pri(queue, pri) for queue in queues for pri in channel.priority_steps]
            found: set[int] = set()
            for key in dict.fromkeys(keys):  # kombu's key per priority step; step 0 is the queue's own name
                found.update(rid for rid in map(message_run_id, channel.client.lrange(key, 0, -1)) if rid is not None)
            return found
    return None


def _message_files(folder: Path, queues: Iterable[str]) -> Iterable[bytes]:
    suffixes = tuple(f".{queue}.msg" for queue in queues)
    for path in folder.glob("*.msg"):
        if path.name.endswith(suffixes):
            try:
                yield path.read_bytes()
            except OSError:  # taken by a worker meanwhile
                continue


class MissingMessages:
    """One reaper's memory between passes: since when each queued run's message has been missing."""

    def __init__(self, *, after: float, clock: Callable[[], float] = time.monotonic):
        self.after, self.clock = after, clock
        self.since: dict[int, float] = {}

    def resend(self, session: Session, *, waiting: set[int], enqueue: Enqueue) -> list[int]:
        """One pass: re-send every queued run missing from `waiting` for `after` seconds; returns their ids.

        Read `waiting` from the broker before calling this (a run queued after that read is only noted, not sent).
        """
        now = self.clock()
        queued = session.scalars(
            select(Run).where(Run.status == RunStatus.QUEUED, Run.cancel_requested.is_(False)).order_by(Run.id)
        ).all()
        self.since = {run.id: self.since.get(run.id, now) for run in queued if run.id not in waiting}
        sent = []
        for run in queued:
            if run.id not in self.since or now - self.since[run.id] < self.after:
                continue
            try:
                enqueue(run.id, run.kind, run.attempt)
            except Exception:  # the broker went down again: the next pass retries
                log.warning("could not re-send run %s", run.id, exc_info=True)
                continue
            missing = now - self.since[run.id]
            runs.add_event(
                session,
                run_id=run.id,
                message=f"re-sent: queued with no job in the broker for {missing:.0f} s (broker restarted empty?)",
                level="warning",
            )
            log.warning("run %s: queued with no message in the broker for %.0f s; re-sent", run.id, missing)
            self.since[run.id] = now  # if it stays missing, once more after `after` seconds
            sent.append(run.id)
        return sent
