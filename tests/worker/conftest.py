"""Worker test fixtures: a tiny base model (when the shipped one is absent), tiny configs, job contexts."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

from store import runs, teams
from store.session import make_sessionmaker
from worker.jobs import JobContext

# A run of a few sub-second steps on CPU: 2 prompts x 2 samples, 4 sampling steps, one of them stochastic.
TINY = {
    "steps": 3,
    "prompts_per_step": 2,
    "group_size": 2,
    "num_steps": 4,
    "sde_steps": 1,
    "eval_every": 0,
    "sample_every": 2,
    "num_logged_samples": 2,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="session")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """None (the shipped base) when trainer/assets has it, else an untrained tiny base for these tests."""
    from trainer.models.builtin import SHIPPED_BASE

    if Path(str(resources.files("trainer") / "assets" / SHIPPED_BASE)).is_file():
        return None
    # Untrained networks with the shipped architecture: the jobs only need a model that runs, not a good one.
    from trainer.models.builtin import new_networks, save_base
    from trainer.prompts import load_prompts

    vocab = sorted({w for p in load_prompts("shapes:all") for w in p.lower().split()})
    transformer, text_encoder = new_networks(vocab)
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_base(path, transformer, text_encoder, {"note": "untrained, for worker tests"})
    return str(path)


@pytest.fixture
def tiny_config(base_model_path):
    """tiny_config(**overrides) -> a validated TrainConfig dumped as JSON (what the API stores)."""
    from trainer.presets import get_preset

    def make(**overrides) -> dict:
        config = get_preset("shapes-dppo").with_overrides({**TINY, "model_path": base_model_path, **overrides})
        return config.model_dump(mode="json")

    return make


@pytest.fixture
def ctx(db_engine, tmp_path) -> JobContext:
    return JobContext(
        session_factory=make_sessionmaker(db_engine),
        data_dir=tmp_path / "data",
        worker="test@host",
        heartbeat_seconds=0.2,
        stale_after=timedelta(seconds=30),
    )


@pytest.fixture
def team(session):
    return teams.create_team(session, name="workers")


@pytest.fixture
def make_run(session, team):
    def make(config: dict, **kw):
        return runs.create_run(session, team_id=team.id, config=config, **kw)

    return make
