"""The API's settings: a weak SECRET_KEY is refused outside dev; INPUT_ROOTS and the broker's visibility timeout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import DEFAULT_SECRET_KEY, Settings
from store.broker import DEFAULT_VISIBILITY_TIMEOUT


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ("ENVIRONMENT", "SECRET_KEY", "INPUT_ROOTS", "DATA_DIR", "BROKER_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (DEFAULT_SECRET_KEY, "still the default"),
        ("", "SECRET_KEY is empty"),
        ("x" * 15, "SECRET_KEY is 15 characters"),
    ],
)
def test_a_weak_secret_key_is_refused_outside_dev(key, message):
    with pytest.raises(ValidationError, match=message) as err:
        Settings(ENVIRONMENT="prod", SECRET_KEY=key)
    assert "openssl rand -hex 32" in str(err.value)


def test_a_long_secret_key_passes_and_dev_takes_any():
    assert Settings(ENVIRONMENT="prod", SECRET_KEY="k" * 16).SECRET_KEY == "k" * 16
    assert Settings(ENVIRONMENT="dev", SECRET_KEY="").SECRET_KEY == ""


def test_input_roots_default_and_from_the_environment(tmp_path, monkeypatch):
    assert Settings(DATA_DIR=tmp_path).INPUT_ROOTS == [Path("/models"), tmp_path.resolve() / "inputs"]
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("INPUT_ROOTS", json.dumps([str(tmp_path / "link"), "/srv/prompts"]))
    assert Settings().INPUT_ROOTS == [(tmp_path / "real").resolve(), Path("/srv/prompts")]
    assert Settings(INPUT_ROOTS=[]).INPUT_ROOTS == []  # no file may be named at all


def test_the_visibility_timeout_is_the_workers():
    assert Settings().BROKER_VISIBILITY_TIMEOUT == DEFAULT_VISIBILITY_TIMEOUT
    with pytest.raises(ValidationError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings(BROKER_VISIBILITY_TIMEOUT=10)
