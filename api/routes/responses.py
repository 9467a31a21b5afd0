"""The error answers the routes document in the OpenAPI, one shared table (FastAPI lists only 200 and 422 itself).

Routers take the answers every route of theirs can give (`responses=errors(401)`), routes add their own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    detail: str


RESPONSES: dict[int, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "Missing, invalid or revoked bearer token."},
    403: {"model": ErrorDetail, "description": "The route needs an admin token."},
    404: {"model": ErrorDetail, "description": "No such resource for this team (another team's looks the same)."},
    409: {"model": ErrorDetail, "description": "The resource's state forbids it (e.g. deleting a running run)."},
    429: {
        "model": ErrorDetail,
        "description": "The team already has MAX_QUEUED_RUNS_PER_TEAM runs queued (docs/limits.md).",
    },
    503: {"model": ErrorDetail, "description": "The broker did not accept the job (the run is marked failed)."},
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented answers for `codes`, for a router's or a route's `responses=`."""
    return {code: RESPONSES[code] for code in codes}
