"""A typed Python client of the REST API (httpx): one method per route, returning api.schemas models.

from api.client import Client
client = Client("http://127.0.0.1:8000", token="fdp_...")   # or env FLOWDPPO_URL / FLOWDPPO_TOKEN
run = client.create_run(preset="shapes-dppo", overrides={"steps": 20})
for event in client.stream(run.id):
    print(event.event, event.data)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from api.aggregate_schemas import ComparisonAggregate
from api.schemas import (
    CheckpointPublic,
    ComparisonAligned,
    ComparisonPublic,
    ComparisonsPublic,
    Health,
    Message,
    MetricsPublic,
    PresetPublic,
    ReviewPair,
    RunEventPublic,
    RunListItem,
    RunPublic,
    RunsPublic,
    SamplePublic,
    Series,
    SummariesPublic,
    TeamPublic,
    TokenCreated,
    VotePublic,
    WinRate,
    WorkerPublic,
)
from store.runs import ANY_RUN, RunFilter

DEFAULT_URL = "http://127.0.0.1:8000"
EXACT_WINDOW = 10_000  # the server's max_points limit: a window of this many steps comes back point by point
T = TypeVar("T")


class ApiError(Exception):
    """A non-2xx answer; `detail` is the server's explanation (for 422: a list of {loc, msg, ...})."""

    def __init__(self, status_code: int, detail: Any):
        self.status_code, self.detail = status_code, detail
        super().__init__(f"HTTP {status_code}: {format_detail(detail)}")


def format_detail(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in detail)
    return str(detail)


@dataclass(frozen=True)
class StreamEvent:
    event: str  # "metrics" {step, values}, "status" {status, step, progress, ...}, "end" {status}
    data: dict[str, Any]


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ):
        """base_url/token default to env FLOWDPPO_URL (else 127.0.0.1:8000) and FLOWDPPO_TOKEN.

        `http` lets tests pass FastAPI's TestClient (an httpx.Client) instead of a network client.
        """
        self.base_url = (base_url or os.environ.get("FLOWDPPO_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("FLOWDPPO_TOKEN")
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.prefix = "/api/v1" if http is not None else f"{self.base_url}/api/v1"

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params = kwargs.pop("params", None)
        if params is not None:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        response = self.http.request(method, self.prefix + path, headers=self.headers, **kwargs)
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def _get(self, path: str, model: type[T] | Any, **kwargs: Any) -> T:
        return TypeAdapter(model).validate_python(self._request("GET", path, **kwargs).json())

    def _post(self, path: str, model: type[T] | Any, body: dict[str, Any] | BaseModel | None = None) -> T:
        payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        return TypeAdapter(model).validate_python(self._request("POST", path, json=payload).json())

    # --- health, presets, teams, workers ---
    def health(self) -> Health:
        return self._get("/health", Health)

    def presets(self) -> list[PresetPublic]:
        return self._get("/presets", list[PresetPublic])

    def me(self) -> TeamPublic:
        return self._get("/teams/me", TeamPublic)

    def create_team(self, name: str, *, admin: bool = False) -> TokenCreated:
        return self._post("/teams", TokenCreated, {"name": name, "admin": admin})

    def workers(self) -> list[WorkerPublic]:
        return self._get("/workers", list[WorkerPublic])

    # --- runs ---
    def create_run(
        self,
        *,
        preset: str | None = None,
        config: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
        name: str = "",
        tags: Sequence[str] = (),
    ) -> RunPublic:
        body = {"preset": preset, "config": config, "overrides": overrides or {}, "name": name, "tags": list(tags)}
        return self._post("/runs", RunPublic, body)

    def list_runs(self, filters: RunFilter = ANY_RUN, *, cursor: str | None = None, limit: int = 50) -> RunsPublic:
        return self._get("/runs", RunsPublic, params={**filters.params(), "cursor": cursor, "limit": limit})

    def iter_runs(self, filters: RunFilter = ANY_RUN, *, limit: int = 50) -> Iterator[RunListItem]:
        """Every run matching `filters`, following the cursor page by page (no configs: get_run has them)."""
        cursor = None
        while True:
            page = self.list_runs(filters, cursor=cursor, limit=limit)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_run(self, run_id: int) -> RunPublic:
        return self._get(f"/runs/{run_id}", RunPublic)

    def cancel_run(self, run_id: int) -> RunPublic:
        return self._post(f"/runs/{run_id}/cancel", RunPublic)

    def delete_run(self, run_id: int) -> Message:
        return Message.model_validate(self._request("DELETE", f"/runs/{run_id}").json())

    def events(self, run_id: int, *, after_id: int | None = None) -> list[RunEventPublic]:
        return self._get(f"/runs/{run_id}/events", list[RunEventPublic], params={"after_id": after_id})

    def evaluate(
        self, run_id: int, *, checkpoint_id: int | None = None, overrides: dict[str, Any] | None = None, name: str = ""
    ) -> RunPublic:
        body = {"checkpoint_id": checkpoint_id, "overrides": overrides or {}, "name": name}
        return self._post(f"/runs/{run_id}/evaluate", RunPublic, body)

    # --- metrics ---
    def metric_keys(self, run_id: int) -> list[str]:
        return self._get(f"/runs/{run_id}/metrics/keys", list[str])

    def metrics(
        self,
        run_ids: int | Sequence[int],
        *,
        keys: Sequence[str] | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        max_points: int = 1000,
    ) -> MetricsPublic:
        """Series of one run, or of several with one bucket width so that they line up."""
        params = {
            "key": list(keys) if keys else None,
            "step_min": step_min,
            "step_max": step_max,
            "max_points": max_points,
        }
        if isinstance(run_ids, int):
            return self._get(f"/runs/{run_ids}/metrics", MetricsPublic, params=params)
        return self._get("/metrics", MetricsPublic, params={**params, "run_id": list(run_ids)})

    def metric_points(
        self, run_id: int, *, step_max: int, keys: Sequence[str] | None = None, window: int = EXACT_WINDOW
    ) -> Iterator[Series]:
        """Every point of steps 0..step_max, not downsampled: windows of `window` steps, each one point per step.

        Yields the series of each window in turn (a key appears once per window it has points in).
        """
        for lo in range(0, step_max + 1, window):
            yield from self.metrics(run_id, keys=keys, step_min=lo, step_max=lo + window - 1, max_points=window).data

    def summaries(self, run_ids: Sequence[int], *, keys: Sequence[str] | None = None) -> SummariesPublic:
        params = {"run_id": list(run_ids), "key": list(keys) if keys else None}
        return self._get("/metrics/summary", SummariesPublic, params=params)

    def stream(self, run_id: int, *, after_step: int = -1, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Live events of a run until it finishes (server-sent events)."""
        url = f"{self.prefix}/runs/{run_id}/metrics/stream"
        # a plain number or None (no timeout), not an httpx.Timeout: the test client may be another httpx (Starlette's
        # TestClient runs on httpx2 when installed, and httpx2 >= 2.17 refuses httpx's Timeout objects)
        with self.http.stream(
            "GET", url, params={"after_step": after_step}, headers=self.headers, timeout=timeout
        ) as response:
            if response.is_error:
                response.read()
                raise ApiError(response.status_code, response.text)
            yield from parse_sse(response.iter_lines())

    # --- samples and checkpoints ---
    def samples(self, run_id: int, *, step: int | None = None) -> list[SamplePublic]:
        return self._get(f"/runs/{run_id}/samples", list[SamplePublic], params={"step": step})

    def sample_steps(self, run_id: int) -> list[int]:
        return self._get(f"/runs/{run_id}/samples/steps", list[int])

    def sample_image(self, run_id: int, sample_id: int, *, thumb: bool = False) -> bytes:
        return self._request("GET", f"/runs/{run_id}/samples/{sample_id}/image", params={"thumb": thumb}).content

    def checkpoints(self, run_id: int) -> list[CheckpointPublic]:
        return self._get(f"/runs/{run_id}/checkpoints", list[CheckpointPublic])

    def download_checkpoint(self, run_id: int, checkpoint_id: int, dest: str | Path) -> Path:
        """Save the checkpoint (a tar of its folder) to `dest` (a file, or a folder to put it in)."""
        url = f"{self.prefix}/runs/{run_id}/checkpoints/{checkpoint_id}/download"
        dest = Path(dest)
        with self.http.stream("GET", url, headers=self.headers) as response:
            if response.is_error:
                response.read()
                raise ApiError(response.status_code, response.text)
            if dest.is_dir():
                dest = dest / f"run{run_id}-checkpoint{checkpoint_id}.tar"
            with open(dest, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return dest

    # --- comparisons ---
    def create_comparison(
        self,
        variants: dict[str, dict[str, Any]],
        *,
        preset: str | None = None,
        config: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
        name: str = "",
        tags: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
        grid: dict[str, list[Any]] | None = None,
        grid_variants: Sequence[str] | None = None,
    ) -> ComparisonPublic:
        """A comparison; with `seeds` (and `grid`) a sweep: variants x grid points x seeds runs."""
        body = {
            "variants": variants,
            "preset": preset,
            "config": config,
            "overrides": overrides or {},
            "name": name,
            "tags": list(tags),
            "seeds": list(seeds) if seeds is not None else None,
            "grid": grid or {},
            "grid_variants": list(grid_variants) if grid_variants is not None else None,
        }
        return self._post("/comparisons", ComparisonPublic, body)

    def aggregate(
        self,
        comparison_id: int,
        *,
        keys: Sequence[str] | None = None,
        kl_budget: float | None = None,
        max_points: int = 1000,
    ) -> ComparisonAggregate:
        """Per variant over its seeds: mean curves with 95% t-bands, summary intervals, the reward-vs-KL frontier."""
        params = {"key": list(keys) if keys else None, "kl_budget": kl_budget, "max_points": max_points}
        return self._get(f"/comparisons/{comparison_id}/aggregate", ComparisonAggregate, params=params)

    def list_comparisons(self, *, limit: int = 100) -> ComparisonsPublic:
        return self._get("/comparisons", ComparisonsPublic, params={"limit": limit})

    def get_comparison(self, comparison_id: int) -> ComparisonPublic:
        return self._get(f"/comparisons/{comparison_id}", ComparisonPublic)

    def aligned(
        self, comparison_id: int, *, keys: Sequence[str] | None = None, max_points: int = 500
    ) -> ComparisonAligned:
        params = {"key": list(keys) if keys else None, "max_points": max_points}
        return self._get(f"/comparisons/{comparison_id}/aligned", ComparisonAligned, params=params)

    # --- review ---
    def review_pair(self, run_ids: Sequence[int], *, step: int | None = None) -> ReviewPair:
        return self._get("/reviews/pair", ReviewPair, params={"run_id": list(run_ids), "step": step})

    def vote(
        self, left_sample_id: int, right_sample_id: int, choice: str, *, reviewer: str = "anonymous"
    ) -> VotePublic:
        body = {
            "left_sample_id": left_sample_id,
            "right_sample_id": right_sample_id,
            "choice": choice,
            "reviewer": reviewer,
        }
        return self._post("/reviews/votes", VotePublic, body)

    def win_rates(self, run_ids: Sequence[int] | None = None) -> list[WinRate]:
        return self._get("/reviews/win-rates", list[WinRate], params={"run_id": list(run_ids) if run_ids else None})


def parse_sse(lines: Iterator[str]) -> Iterator[StreamEvent]:
    """Server-sent events from text lines: `event:` and `data:` fields, blank line = dispatch; `:` = comment."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield StreamEvent(event=event, data=json.loads("\n".join(data)))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield StreamEvent(event=event, data=json.loads("\n".join(data)))
