"""The API's settings: the shared ones (store/settings.py) plus the secret key, INPUT_ROOTS and the server's own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from store.settings import PlatformSettings

DEFAULT_SECRET_KEY = "changethis"
MIN_SECRET_KEY_LENGTH = 16


class Settings(PlatformSettings):
    """Embedded mode by default (SQLite + Celery's filesystem transport under DATA_DIR); URLs switch to distributed."""

    ENVIRONMENT: Literal["dev", "prod"] = "dev"
    # Directories whose files a submitted config may name (file: prompt sets, model_path, reward paths), as seen by
    # the workers; None = ["/models", "{DATA_DIR}/inputs"]. From the environment as JSON: '["/models", "/data/in"]'.
    INPUT_ROOTS: list[Path] | None = None
    SECRET_KEY: str = DEFAULT_SECRET_KEY
    API_HOST: str = "127.0.0.1"
    API_PORT: int = 8000
    API_V1_STR: str = "/api/v1"
    PROJECT_NAME: str = "flowdppo"
    SSE_POLL_SECONDS: float = 0.5  # how often the live stream looks for new points (the DB is the truth)
    MAX_SWEEP_RUNS: int = Field(64, ge=1)  # runs one comparison may queue: variants x grid points x seeds
    # Queued runs one team may have at once; a submission past it is a 429 (docs/limits.md). 0 = no cap.
    MAX_QUEUED_RUNS_PER_TEAM: int = Field(100, ge=0)
    # How long an API process trusts a bearer token it has verified, without asking the database again; a revoked
    # token (`flowdppo token revoke`, another process) keeps working for at most this long (docs/limits.md). 0 = off.
    AUTH_CACHE_SECONDS: float = Field(5.0, ge=0, le=300)

    @model_validator(mode="after")
    def _fill_input_roots_and_check_secret(self) -> Settings:
        # After PlatformSettings' validator: DATA_DIR is resolved.
        if self.INPUT_ROOTS is None:
            self.INPUT_ROOTS = [Path("/models"), self.DATA_DIR / "inputs"]
        # Resolved as the submitted paths are (os.path.realpath), so a root reached through a link still matches.
        self.INPUT_ROOTS = [Path(os.path.realpath(root.expanduser())) for root in self.INPUT_ROOTS]
        if self.ENVIRONMENT != "dev":
            self._check_secret_key()
        return self

    def _check_secret_key(self) -> None:
        how = "set SECRET_KEY to a long random value, e.g. `openssl rand -hex 32`"
        if self.SECRET_KEY == DEFAULT_SECRET_KEY:
            raise ValueError(
                f"SECRET_KEY is still the default {DEFAULT_SECRET_KEY!r} with ENVIRONMENT={self.ENVIRONMENT!r}; {how}"
            )
        if len(self.SECRET_KEY) < MIN_SECRET_KEY_LENGTH:
            got = "empty" if not self.SECRET_KEY else f"{len(self.SECRET_KEY)} characters"
            raise ValueError(
                f"SECRET_KEY is {got} with ENVIRONMENT={self.ENVIRONMENT!r}; it needs at least "
                f"{MIN_SECRET_KEY_LENGTH} characters: {how}"
            )
