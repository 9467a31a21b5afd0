"""The settings every process of the platform shares (spec/platform.md "Two ways to run, same code"): the data
folder, the database and broker URLs and the broker's options, read from the environment (or .env).

api/settings.py (`Settings`) and worker/settings.py (`WorkerSettings`) subclass `PlatformSettings` with their own
fields; store/ is the layer both may import. The variable names are the deployment's (docker-compose.yml,
.env.example): embedded mode by default (SQLite + Celery's filesystem transport under DATA_DIR), URLs switch to
distributed. Only pydantic here: a container health check imports it without SQLAlchemy or CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.broker import DEFAULT_POLL_SECONDS, DEFAULT_VISIBILITY_TIMEOUT, transport_options

EMBEDDED_BROKER_URL = "filesystem://"


class PlatformSettings(BaseSettings):
    """Where the data, the database and the broker are; the same values in the API, the workers and the reaper."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    DATA_DIR: Path = Field(Path("./data"), description="Artifacts (runs/<id>/...) and, embedded, the DB and broker.")
    DATABASE_URL: str = Field("", description="'' = sqlite:///{DATA_DIR}/flowdppo.db")
    BROKER_URL: str = Field("", description="'' = filesystem:// with folders under {DATA_DIR}/broker")
    BROKER_VISIBILITY_TIMEOUT: int = Field(
        DEFAULT_VISIBILITY_TIMEOUT,
        ge=60,
        description="Redis: seconds before an unacked job is handed out again; above the longest run.",
    )
    BROKER_POLL_SECONDS: float = Field(
        DEFAULT_POLL_SECONDS, gt=0, description="Filesystem transport: how often queues are polled."
    )
    REMOTE_REWARD_HOSTS: str = Field(
        "",
        description="Comma-separated host or host:port a 'remote' reward may call, checked by the API at submission "
        "and by the worker before each request; '' = remote rewards refused (docs/limits.md).",
    )

    @model_validator(mode="after")
    def _fill_urls(self) -> PlatformSettings:
        # Resolved, so that every process (API, worker, reaper) finds the same files from any working directory.
        self.DATA_DIR = self.DATA_DIR.expanduser().resolve()
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR / 'flowdppo.db'}"  # absolute: every process, one file
        if not self.BROKER_URL:
            self.BROKER_URL = EMBEDDED_BROKER_URL
        return self

    @property
    def remote_reward_hosts(self) -> list[str]:
        """REMOTE_REWARD_HOSTS as a list of `host` / `host:port` entries."""
        return [host.strip() for host in self.REMOTE_REWARD_HOSTS.split(",") if host.strip()]

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (embedded mode only)."""
        return self.DATA_DIR / "broker"

    def broker_transport_options(self) -> dict[str, Any]:
        """The options every Celery app of the platform uses for this broker (store/broker.py)."""
        return transport_options(
            self.BROKER_URL,
            folder=self.broker_folder,
            visibility_timeout=self.BROKER_VISIBILITY_TIMEOUT,
            polling_interval=self.BROKER_POLL_SECONDS,
        )

    def platform_values(self) -> dict[str, Any]:
        """The shared fields' values, to build another component's settings on the same data, database and broker."""
        return {name: getattr(self, name) for name in PlatformSettings.model_fields}
