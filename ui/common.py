"""What every tab shares: the caller's session (token -> team), service errors as gr.Error, run labels and choices."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import gradio as gr

from api.schemas import RunKind, RunPublic
from api.services import Services
from api.services import comparisons as comparison_service
from api.services import runs as run_service
from api.services import teams as team_service
from api.services.errors import ServiceError
from api.services.teams import Principal

LOGIN_HINT = "Log in with a team token (`flowdppo token create --team NAME`, or the one `flowdppo up` printed)."
CHOICE_LIMIT = 200  # runs offered in the pickers (newest first)


class NotLoggedIn(gr.Error):
    def __init__(self) -> None:
        super().__init__(LOGIN_HINT, title="Not logged in")


def authenticate(services: Services, token: str | None) -> Principal | None:
    if not token:
        return None
    with services.session() as session:
        return team_service.authenticate(session, token=token.strip())


@contextmanager
def team_session(
    services: Services, token: str | None, *, keep: tuple[type[ServiceError], ...] = ()
) -> Iterator[tuple[Any, Principal]]:
    """A service session and the token's team; a bad token or a ServiceError becomes a toast (gr.Error), except
    the `keep` types, which the caller handles (the form shows InvalidConfigError next to each field).

    Every handler re-checks the token: Gradio events are callable as an API, not only from the page.
    """
    with services.session() as session:
        principal = team_service.authenticate(session, token=token.strip()) if token else None
        if principal is None:
            raise NotLoggedIn()
        try:
            yield session, principal
        except keep:
            raise
        except ServiceError as err:
            raise gr.Error(err.message) from err


def owned_runs(session: Any, principal: Principal, run_ids: list[int] | None) -> list[Any]:
    """The team's runs (ORM rows, for the services that take them) in the given order; unknown ids are refused."""
    ids = list(dict.fromkeys(int(r) for r in run_ids or []))
    return [run_service.get_owned_run(session, team_id=principal.team_id, run_id=r) for r in ids]


def run_label(run: Any) -> str:
    """'#12 dppo' for a comparison variant, '#7 shapes-dppo' otherwise; evaluations say so."""
    name = run.variant or run.name or run.preset or "run"
    prefix = "eval " if run.kind == RunKind.EVAL else ""
    return f"#{run.id} {prefix}{name}"


def run_choices(services: Services, token: str | None, *, with_status: bool = True) -> list[tuple[str, int]]:
    """(label, id) pairs of the team's newest runs, for the run pickers."""
    with team_session(services, token) as (session, principal):
        page = run_service.list_runs(session, team_id=principal.team_id, limit=CHOICE_LIMIT)
    return [(f"{run_label(r)} ({r.status})" if with_status else run_label(r), r.id) for r in page.data]


def comparison_choices(services: Services, token: str | None) -> list[tuple[str, int]]:
    with team_session(services, token) as (session, principal):
        groups = comparison_service.list_comparisons(session, team_id=principal.team_id, limit=CHOICE_LIMIT)
    return [(f"#{c.id} {c.name} ({', '.join(run_label(r) for r in c.runs)})", c.id) for c in groups.data]


def comparison_run_ids(services: Services, token: str | None, comparison_id: int | None) -> list[int]:
    if comparison_id is None:
        return []
    with team_session(services, token) as (session, principal):
        group = comparison_service.get_comparison(session, team_id=principal.team_id, comparison_id=int(comparison_id))
    return [r.id for r in group.runs]


def latest_run_id(services: Services, token: str | None) -> int | None:
    """The team's newest run (what Run detail opens on), None when it has none or the token is not a team's."""
    if authenticate(services, token) is None:
        return None
    with team_session(services, token) as (session, principal):
        page = run_service.list_runs(session, team_id=principal.team_id, limit=1)
    return page.data[0].id if page.data else None


def elapsed_s(run: RunPublic | Any, now: datetime | None = None) -> float | None:
    if run.started_at is None:
        return None
    return ((run.finished_at or now or datetime.now(UTC)) - run.started_at).total_seconds()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_value(value: float | None, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}"
