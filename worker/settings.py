"""The worker's settings: the shared ones (store/settings.py) plus the device, heartbeat and reaper timings."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from store.settings import PlatformSettings


class WorkerSettings(PlatformSettings):
    """Embedded defaults (SQLite + Celery's filesystem transport under DATA_DIR); URLs switch to distributed."""

    WORKER_DEVICE: str = Field("auto", description="'auto' = cuda when visible, else cpu; or 'cpu', 'cuda', 'cuda:1'.")
    WORKER_HEARTBEAT_SECONDS: float = Field(
        15.0, gt=0, description="A running job touches its run row at least this often (besides once per step)."
    )
    RUN_STALE_AFTER_SECONDS: float = Field(
        180.0, gt=0, description="A 'running' run whose heartbeat is older than this is lost (its worker died)."
    )
    REAPER_INTERVAL_SECONDS: float = Field(30.0, gt=0, description="How often the reaper looks for lost runs.")
    BROKER_RESEND_AFTER_SECONDS: float = Field(
        60.0, gt=0, description="A queued run whose job is missing from the broker this long is sent again."
    )
    WORKER_RANKS: int = Field(
        1,
        ge=1,
        le=1024,
        description="Ranks one job of this worker may run (its GPUs; `flowdppo worker --gpus`/`--ranks`, spec §12).",
    )
    WORKER_TORCH_THREADS: int = Field(
        0, ge=0, description="torch threads per job (torch.set_num_threads in the job's process); 0 = torch's default."
    )
    EMBEDDED_WORKERS: int = Field(
        0,
        ge=0,
        description="`flowdppo up`: worker processes; 0 = one per GPU, else one per core (at most 4, worker/slots.py)",
    )

    @model_validator(mode="after")
    def _check_timings(self) -> WorkerSettings:
        if self.RUN_STALE_AFTER_SECONDS <= self.WORKER_HEARTBEAT_SECONDS:
            raise ValueError(
                f"RUN_STALE_AFTER_SECONDS={self.RUN_STALE_AFTER_SECONDS} must exceed "
                f"WORKER_HEARTBEAT_SECONDS={self.WORKER_HEARTBEAT_SECONDS}, or live runs are reaped"
            )
        return self

    @property
    def stale_after(self) -> timedelta:
        return timedelta(seconds=self.RUN_STALE_AFTER_SECONDS)

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for a worker or reaper subprocess."""
        return {name: str(value) for name, value in self.model_dump().items() if value is not None}
