"""Fixtures of the dashboard tests: one migrated SQLite file and a real filesystem broker per session, a seeded
clip vs dppo comparison, and a team per test (every service call is team-scoped, so tests stay independent).

The services under the dashboard are tested on PostgreSQL too (tests/api); these tests check the view over them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from factories import TeamToken, make_team_token
from live import chromium

from api.services import Services
from api.settings import Settings
from store.migrate import upgrade
from worker.seed import seed_comparison


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("ui-data")
    url = f"sqlite:///{data_dir / 'flowdppo.db'}"
    upgrade(url)
    svc = Services.from_settings(Settings(DATA_DIR=data_dir, DATABASE_URL=url, BROKER_URL="filesystem://"))
    yield svc
    svc.close()


@pytest.fixture
def team(services: Services) -> TeamToken:
    with services.session() as session:
        return make_team_token(session)


@pytest.fixture(scope="session")
def seeded(services: Services) -> tuple[TeamToken, int, list[int]]:
    """A team with a finished 60-step clip vs dppo comparison: (team, comparison id, [clip run, dppo run])."""
    with services.session() as session:
        owner = make_team_token(session)
        group, run_ids = seed_comparison(session, team_id=owner.team_id, data_dir=services.settings.DATA_DIR)
    return owner, group, run_ids


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium for the browser tests (tests/ui/live.py)."""
    with chromium() as launched:
        yield launched
