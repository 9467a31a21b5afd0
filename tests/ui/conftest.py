"""Fixtures of the dashboard tests: one migrated SQLite file and a real filesystem broker per session, a seeded
clip vs dppo comparison, and a team per test (every service call is team-scoped, so tests stay independent).

The services under the dashboard are tested on PostgreSQL too (tests/api); these tests check the view over them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ui_seed import Team, make_team, seed_comparison  # noqa: E402

from api.services import Services  # noqa: E402
from api.settings import Settings  # noqa: E402
from store.migrate import upgrade  # noqa: E402


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("ui-data")
    url = f"sqlite:///{data_dir / 'flowdppo.db'}"
    upgrade(url)
    svc = Services.from_settings(Settings(DATA_DIR=data_dir, DATABASE_URL=url, BROKER_URL="filesystem://"))
    yield svc
    svc.close()


@pytest.fixture
def team(services: Services) -> Team:
    with services.session() as session:
        return make_team(session)


@pytest.fixture(scope="session")
def seeded(services: Services) -> tuple[Team, int, list[int]]:
    """A team with a finished 60-step clip vs dppo comparison: (team, comparison id, [clip run, dppo run])."""
    with services.session() as session:
        owner = make_team(session)
        group, run_ids = seed_comparison(session, team_id=owner.team_id, data_dir=services.settings.DATA_DIR)
    return owner, group, run_ids
