"""The worker's settings, read from the environment; the names are shared with api/settings.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.broker import DEFAULT_POLL_SECONDS, DEFAULT_VISIBILITY_TIMEOUT, transport_options


class WorkerSettings(BaseSettings):
    """Embedded defaults (SQLite + Celery's filesystem transport under DATA_DIR); URLs switch to distributed."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    DATA_DIR: Path = Field(Path("./data"), description="Artifacts (runs/<id>/...) and, embedded, the DB and broker.")
    DATABASE_URL: str = Field("", description="'' = sqlite:///{DATA_DIR}/flowdppo.db")
    BROKER_URL: str = Field("", description="'' = filesystem:// with folders under {DATA_DIR}/broker")
    BROKER_VISIBILITY_TIMEOUT: int = Field(
        DEFAULT_VISIBILITY_TIMEOUT,
        ge=60,
        description="Redis: seconds before an unacked job is handed out again; above the longest run.",
    )
    WORKER_DEVICE: str = Field("auto", description="'auto' = cuda when visible, else cpu; or 'cpu', 'cuda', 'cuda:1'.")
    WORKER_HEARTBEAT_SECONDS: float = Field(
        15.0, gt=0, description="A running job touches its run row at least this often (besides once per step)."
    )
    RUN_STALE_AFTER_SECONDS: float = Field(
        180.0, gt=0, description="A 'running' run whose heartbeat is older than this is lost (its worker died)."
    )
    REAPER_INTERVAL_SECONDS: float = Field(30.0, gt=0, description="How often the reaper looks for lost runs.")
    BROKER_POLL_SECONDS: float = Field(
        DEFAULT_POLL_SECONDS, gt=0, description="Filesystem transport: how often queues are polled."
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> WorkerSettings:
        self.DATA_DIR = self.DATA_DIR.expanduser().resolve()
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR}/flowdppo.db"
        if not self.BROKER_URL:
            self.BROKER_URL = "filesystem://"
        if self.RUN_STALE_AFTER_SECONDS <= self.WORKER_HEARTBEAT_SECONDS:
            raise ValueError(
                f"RUN_STALE_AFTER_SECONDS={self.RUN_STALE_AFTER_SECONDS} must exceed "
                f"WORKER_HEARTBEAT_SECONDS={self.WORKER_HEARTBEAT_SECONDS}, or live runs are reaped"
            )
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (the same folder as the API's settings.broker_folder)."""
        return self.DATA_DIR / "broker"

    @property
    def stale_after(self) -> timedelta:
        return timedelta(seconds=self.RUN_STALE_AFTER_SECONDS)

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for a worker or reaper subprocess."""
        return {name: str(value) for name, value in self.model_dump().items() if value is not None}

    def broker_transport_options(self) -> dict[str, Any]:
        """The options every Celery app of the platform uses for this broker (store/broker.py)."""
        return transport_options(
            self.BROKER_URL,
            folder=self.broker_folder,
            visibility_timeout=self.BROKER_VISIBILITY_TIMEOUT,
            polling_interval=self.BROKER_POLL_SECONDS,
        )
