"""Errors the services raise; api/main.py maps them to HTTP statuses, the dashboard shows their messages."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFoundError(ServiceError):
    """Unknown id, or one that belongs to another team (the two are indistinguishable on purpose)."""

    status_code = 404


class ConflictError(ServiceError):
    """The request is valid but the resource's state forbids it (e.g. deleting a running run)."""

    status_code = 409


class QuotaError(ServiceError):
    """The team is over a limit of the platform (docs/limits.md), e.g. MAX_QUEUED_RUNS_PER_TEAM."""

    status_code = 429


class UnavailableError(ServiceError):
    """A dependency (the broker) did not answer."""

    status_code = 503


class InvalidConfigError(ServiceError):
    """A config that TrainConfig/EvalConfig refuses; `errors` are FastAPI-style {loc, msg, type, input} dicts."""

    status_code = 422

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("\n".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))
