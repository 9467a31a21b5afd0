"""The API's settings, read from the environment (spec/platform.md "Two ways to run, same code")."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "changethis"


class Settings(BaseSettings):
    """Embedded mode by default (SQLite + Celery's filesystem transport under DATA_DIR); URLs switch to distributed."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    ENVIRONMENT: Literal["dev", "prod"] = "dev"
    DATA_DIR: Path = Path("./data")
    DATABASE_URL: str = ""  # "" = sqlite:///{DATA_DIR}/flowdppo.db
    BROKER_URL: str = ""  # "" = filesystem:// with its folders under {DATA_DIR}/broker
    SECRET_KEY: str = DEFAULT_SECRET_KEY
    API_HOST: str = "127.0.0.1"
    API_PORT: int = 8000
    API_V1_STR: str = "/api/v1"
    PROJECT_NAME: str = "flowdppo"
    SSE_POLL_SECONDS: float = 0.5  # how often the live stream looks for new points (the DB is the truth)

    @model_validator(mode="after")
    def _fill_defaults_and_check_secret(self) -> Settings:
        self.DATA_DIR = self.DATA_DIR.expanduser().resolve()  # the worker resolves it the same way
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR}/flowdppo.db"
        if not self.BROKER_URL:
            self.BROKER_URL = "filesystem://"
        if self.ENVIRONMENT != "dev" and self.SECRET_KEY == DEFAULT_SECRET_KEY:
            raise ValueError(
                f"SECRET_KEY is still the default {DEFAULT_SECRET_KEY!r} with ENVIRONMENT={self.ENVIRONMENT!r}; "
                "set SECRET_KEY to a long random value, e.g. `openssl rand -hex 32`"
            )
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (embedded mode only)."""
        return self.DATA_DIR / "broker"

    @property
    def is_embedded(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite") and self.BROKER_URL.startswith("filesystem")
