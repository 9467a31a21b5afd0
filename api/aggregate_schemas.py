"""REST shapes of a comparison aggregated over seeds (GET /comparisons/{id}/aggregate); api/services/aggregates.py.

Every interval is the 95% Student-t interval over a variant's included seeds (n - 1 degrees of freedom; lo and hi
are null for n < 2). NaN travels as null.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas import ComparisonPublic, RunStatus

INTERVAL_METHOD = "95% Student-t interval over seeds: mean ± t(0.975, n-1)·s/sqrt(n); none for n < 2"


class IntervalPublic(BaseModel):
    mean: float | None
    lo: float | None = Field(description="Lower end of the 95% t-interval; null for n < 2.")
    hi: float | None
    n: int = Field(description="Seeds with a value.")


class BandPublic(BaseModel):
    """One metric of a variant averaged over its seeds, step by step (same bucket width for every run)."""

    key: str
    steps: list[int]
    rollouts: list[int] = Field(description="Rollouts (images) seen by each step: step x prompts_per_step x G.")
    mean: list[float | None]
    lo: list[float | None]
    hi: list[float | None]
    n: list[int] = Field(description="Seeds that logged the step.")


class FrontierPublic(BaseModel):
    """Reward vs KL to the base at each eval step (means over seeds, in step order) and its upper envelope."""

    steps: list[int]
    kl: list[float | None]
    reward: list[float | None]
    envelope_kl: list[float] = Field(description="The points no lower-KL point beats, sorted by KL.")
    envelope_reward: list[float]


class SeedRun(BaseModel):
    run_id: int
    seed: int | None
    status: RunStatus
    included: bool = Field(description="False for failed and cancelled runs: they are left out of every mean.")


class VariantAggregate(BaseModel):
    variant: str = Field(description="The cell: a variant name, with its grid point in a sweep ('dppo delta=1e-06').")
    runs: list[SeedRun]
    n_runs: int
    n_included: int = Field(description="Runs in the aggregate: succeeded, plus queued/running ones so far.")
    n_failed: int = Field(description="Failed and cancelled runs, left out.")
    n_active: int = Field(description="Included runs still queued or running (their curves stop early).")
    rollouts_per_step: int
    curves: list[BandPublic]
    final_reward: IntervalPublic = Field(description="Held-out reward at each run's last eval step.")
    best_reward: IntervalPublic = Field(description="Each run's best held-out reward.")
    auc: IntervalPublic = Field(description="Trapezoid area under the held-out curve / step span (mean height).")
    final_kl: IntervalPublic = Field(description="kl_ref/mean at each run's last logged step.")
    reward_at_kl: IntervalPublic = Field(
        description="Each run's best held-out reward among eval steps whose kl_ref <= kl_budget (runs with no such "
        "step have no value: see n)."
    )
    frontier: FrontierPublic


class ComparisonAggregate(BaseModel):
    comparison: ComparisonPublic
    interval: str = INTERVAL_METHOD
    reward_key: str
    kl_key: str
    kl_budget: float | None = Field(
        description="The budget of reward_at_kl: the query's, else the smallest mean final KL over the variants."
    )
    kl_alignment: str = Field(
        "kl_ref at an eval step = its last point at or before that step (0 at step 0, the base model)",
        description="How the per-step KL is matched to the eval steps.",
    )
    variants: list[VariantAggregate]
