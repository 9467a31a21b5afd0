"""Pydantic in/out shapes of the REST API (and of the service layer the dashboard calls); no ORM objects leak out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from annotated_types import Interval
from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# The run enums and filter are the store's, one definition for store, services, REST, client, CLI and dashboard
# (re-exported here for ui/, which goes through api/).
from store.enums import ACTIVE_STATUSES as ACTIVE_STATUSES
from store.enums import FINISHED_STATUSES as FINISHED_STATUSES
from store.enums import RunKind, RunStatus
from store.models import Comparison, ReviewVote, Run, Team, VoteChoice
from store.runs import RunFilter as RunFilter
from trainer.config import MAX_SEED, TrainConfig
from trainer.text import Text, check_json

# --- bounded inputs (docs/limits.md): every id, count and string a request carries fits the column that holds it ---
INT32_MAX = 2**31 - 1  # INTEGER columns: PostgreSQL's are 32-bit (SQLite's hold 64 bits)
INT64_MAX = 2**63 - 1  # BIGINT columns
DbId = Annotated[int, Interval(ge=1, le=INT32_MAX)]  # runs, comparisons, checkpoints, teams (INTEGER keys)
BigDbId = Annotated[int, Interval(ge=1, le=INT64_MAX)]  # samples, run events, votes (BIGINT keys on PostgreSQL)
StepQuery = Annotated[int, Interval(ge=-(2**31), le=INT32_MAX)]  # a step filter: metrics/samples.step are INTEGER
MAX_TAGS = 32  # tags per run
MAX_VARIANTS = 256  # variants per comparison as parsed; the runs one may queue: Settings.MAX_SWEEP_RUNS
MAX_OVERRIDES = 200  # dotted keys per overrides object
RunName = Text(Run.__table__.c.name.type.length)
PresetName = Text(Run.__table__.c.preset.type.length)
Tag = Text(64, min_length=1)
VariantName = Text(Run.__table__.c.variant.type.length, min_length=1)
ComparisonName = Text(Comparison.__table__.c.name.type.length)
ReviewerName = Text(ReviewVote.__table__.c.reviewer.type.length)
TeamName = Text(Team.__table__.c.name.type.length, min_length=1)
MetricKey = Text(200)  # metrics.key is String(200)
# Dotted keys -> values; each value is then checked by the TrainConfig/EvalConfig field it sets (a 422 naming it).
Overrides = Annotated[dict[str, Any], Field(max_length=MAX_OVERRIDES)]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- runs ---
class RunCreate(BaseModel):
    """A run from a preset name or a full TrainConfig, plus optional dotted-key overrides (`{"loss": "clip"}`)."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName | None = Field(None, description="Preset name (GET /presets), e.g. 'shapes-dppo'.")
    config: TrainConfig | None = Field(None, description="A full config; omitted fields take their defaults.")
    overrides: Overrides = Field(default_factory=dict, description="Dotted keys applied last, e.g. {'steps': 5}.")
    name: RunName = ""
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)

    @model_validator(mode="after")
    def _one_source(self) -> RunCreate:
        if self.preset is not None and self.config is not None:
            raise ValueError("give either preset or config, not both")
        return self


class RunListItem(_Out):
    """A run as GET /runs lists it: every field of RunPublic but `config` (GET /runs/{run_id} has the config)."""

    id: int
    kind: RunKind
    status: RunStatus
    name: str
    tags: list[str]
    preset: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    step: int
    total_steps: int
    progress: float
    error: str | None
    attempt: int
    cancel_requested: bool
    parent_run_id: int | None
    checkpoint_id: int | None
    comparison_id: int | None
    variant: str | None
    seed: int | None = None
    num_processes: int = Field(
        1,
        validation_alias=AliasChoices("num_processes", AliasPath("config", "num_processes")),  # JSON, or a Run row
        description="The run's ranks (GPUs; spec §12): its config's num_processes, 1 for evaluations.",
    )


class RunPublic(RunListItem):
    """A whole run, with its validated config (TrainConfig for training runs, EvalConfig for evaluations)."""

    config: dict[str, Any]


class RunsPublic(BaseModel):
    data: list[RunListItem] = Field(description="Runs without their configs; GET /runs/{run_id} has the config.")
    count: int = Field(description="Number of runs in this page.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class RunEventPublic(_Out):
    id: int
    time: datetime
    level: str
    message: str


class EvaluateCreate(BaseModel):
    """Evaluate one of the run's checkpoints, or the base model when checkpoint_id is null."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_id: DbId | None = Field(None, description="A checkpoint of this run; null = the base model.")
    overrides: Overrides = Field(
        default_factory=dict, description="EvalConfig fields, e.g. {'num_prompts': 8, 'samples_per_prompt': 2}."
    )
    name: RunName = ""


# --- metrics ---
class Series(BaseModel):
    """One downsampled series as parallel lists, one entry per bucket (`steps` = each bucket's last step).

    Buckets have the same width for every series of one request, so series of several runs line up.
    NaN values travel as null.
    """

    run_id: int
    key: str
    steps: list[int]
    last: list[float | None]
    min: list[float | None]
    max: list[float | None]
    wall: list[float] = Field(
        default_factory=list,
        description="Wall time (Unix seconds, UTC) at which each bucket's last point was logged, for time axes.",
    )


class MetricsPublic(BaseModel):
    data: list[Series]


class MetricSummary(BaseModel):
    final_step: int
    final: float | None
    best_step: int
    best: float | None


class RunSummary(BaseModel):
    run_id: int
    name: str
    variant: str | None
    status: RunStatus
    step: int
    total_steps: int
    duration_s: float | None = Field(None, description="Wall time from start to finish (or to now while running).")
    metrics: dict[str, MetricSummary] = Field(description="key -> final and best (best = max for rewards, else min).")


class SummariesPublic(BaseModel):
    data: list[RunSummary]


# --- samples and checkpoints ---
class SamplePublic(_Out):
    id: int
    run_id: int
    step: int
    prompt: str
    seed: int
    index: int
    rewards: dict[str, Any]
    created_at: datetime


class CheckpointPublic(_Out):
    id: int
    run_id: int
    step: int
    created_at: datetime


# --- comparisons ---
class ComparisonCreate(BaseModel):
    """One base config (a preset or a full config, plus overrides) run as named variants with the same seeds.

    A sweep: `seeds` runs every variant once per seed, and `grid` crosses the variants (or `grid_variants`) with
    every combination of its values; runs are named variant, grid point and seed (`dppo delta=1e-06`, seed 2).
    """

    model_config = ConfigDict(extra="forbid")

    name: ComparisonName = ""
    preset: PresetName | None = None
    config: TrainConfig | None = None
    overrides: Overrides = Field(default_factory=dict, description="Applied to the base before each variant.")
    variants: dict[VariantName, Overrides] = Field(
        min_length=1,
        max_length=MAX_VARIANTS,
        description="Variant name -> overrides, e.g. {'clip': {'loss': 'clip'}, 'dppo': {'loss': 'dppo'}}.",
    )
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None, min_length=1, max_length=64, description="Sweep seeds, e.g. [0, 1, 2]; null = the config's seed."
    )
    grid: dict[Text(200), Annotated[list[Any], AfterValidator(check_json)]] = Field(
        default_factory=dict,
        max_length=4,
        description="Dotted key -> values, crossed with the variants, e.g. {'delta': [1e-5, 1e-6, 1e-7]}.",
    )
    grid_variants: list[VariantName] | None = Field(
        None,
        max_length=MAX_VARIANTS,
        description="The variants the grid applies to (others run once per seed); null = every variant.",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not 1 <= len(values) <= 16 or len({repr(v) for v in values}) != len(values):
                raise ValueError(f"grid.{key}: 1 to 16 distinct values, got {values}")
        return grid

    @model_validator(mode="after")
    def _one_source(self) -> ComparisonCreate:
        if self.preset is not None and self.config is not None:
            raise ValueError("give either preset or config, not both")
        return self


class ComparisonPublic(_Out):
    id: int
    name: str
    base_config: dict[str, Any]
    variants: list[dict[str, Any]]
    seeds: list[int] | None = None
    grid: dict[str, list[Any]] | None = None
    created_at: datetime
    runs: list[RunPublic] = Field(default_factory=list)


class ComparisonsPublic(BaseModel):
    data: list[ComparisonPublic]
    count: int


class AlignedSeries(BaseModel):
    """One metric of every run of a comparison on the steps they all have (same bucket width for all runs)."""

    key: str
    steps: list[int]
    values: dict[int, list[float | None]] = Field(description="run_id -> values aligned with `steps` (NaN = null).")


class ComparisonAligned(BaseModel):
    comparison: ComparisonPublic
    series: list[AlignedSeries]


# --- presets ---
class PresetPublic(BaseModel):
    name: str
    config: dict[str, Any]


# --- reviews ---
class ReviewPair(BaseModel):
    """Two samples with the same prompt and seed from two runs, sides randomised; the runs stay hidden."""

    left_sample_id: int
    right_sample_id: int
    prompt: str
    seed: int


class VoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    left_sample_id: BigDbId
    right_sample_id: BigDbId
    choice: VoteChoice
    reviewer: ReviewerName = "anonymous"


class VotePublic(_Out):
    id: int
    reviewer: str
    left_sample_id: int
    right_sample_id: int
    choice: VoteChoice
    created_at: datetime


class WinRate(BaseModel):
    """Run `run_id` against `opponent_id` in blind votes; a tie counts half a win."""

    model_config = ConfigDict(from_attributes=True)

    run_id: int
    opponent_id: int
    wins: int
    losses: int
    ties: int
    n: int
    win_rate: float | None
    ci_low: float | None = Field(None, description="95% Wilson interval, lower bound.")
    ci_high: float | None = Field(None, description="95% Wilson interval, upper bound.")


# --- teams, workers, health ---
class TeamPublic(_Out):
    id: int
    name: str
    created_at: datetime


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TeamName
    admin: bool = False


class TokenCreated(BaseModel):
    team: TeamPublic
    token: str = Field(description="The bearer token; shown once, only its hash is stored.")
    is_admin: bool


class TokenPublic(_Out):
    """A token as listed to operators: its public prefix and state, never the secret or its hash."""

    id: int
    team_id: int
    name: str
    prefix: str
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class WorkerPublic(BaseModel):
    name: str = Field(description="Celery node name, e.g. gpu0@host (what runs' `worker` field names).")
    online: bool = Field(description="Answered a ping; an offline worker still named by a running run is shown.")
    queues: list[str] = Field(default_factory=list)
    run_ids: list[int] = Field(default_factory=list, description="The caller's runs it is executing.")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool
    broker_error: str | None = Field(None, description="Why the broker does not answer; null when it does.")
    version: str


class Message(BaseModel):
    message: str
