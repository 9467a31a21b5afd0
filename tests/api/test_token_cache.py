"""Verified bearer tokens are trusted for AUTH_CACHE_SECONDS without a query; a revoke lands within that time."""

from __future__ import annotations

import pytest
from api_helpers import API
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.main import create_app
from api.services import Services
from api.services.teams import Principal, TokenCache
from store import teams as store_teams


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_are_bounded_and_keyed_by_hash():
    clock = Clock()
    cache = TokenCache(ttl=5, max_entries=2, clock=clock)
    alice, bob, carol = (Principal(team_id=i, team_name=n) for i, n in enumerate(("alice", "bob", "carol")))
    cache.put("tok-a", alice)
    assert cache.get("tok-a") == alice and cache.get("tok-b") is None
    assert "tok-a" not in repr(cache._entries)  # the plaintext is never kept
    clock.now += 4.9
    assert cache.get("tok-a") == alice
    clock.now += 0.1
    assert cache.get("tok-a") is None  # expired at ttl
    cache.put("tok-a", alice)
    cache.put("tok-b", bob)
    cache.put("tok-c", carol)  # past max_entries: the oldest goes
    assert [cache.get(t) for t in ("tok-a", "tok-b", "tok-c")] == [None, bob, carol]
    off = TokenCache(ttl=0)
    off.put("tok-a", alice)
    assert off.get("tok-a") is None


@pytest.fixture
def cached(services):
    """The app over the suite's database, with a 5 s token cache on a clock the test moves."""
    clock = Clock()
    svc = Services(
        settings=services.settings,
        session_factory=services.session_factory,
        queue=services.queue,
        tokens=TokenCache(ttl=5, clock=clock),
    )
    token_queries = []

    def count(conn, cursor, statement, *args):
        if "FROM api_tokens" in statement:
            token_queries.append(statement)

    engine = services.session_factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    yield TestClient(create_app(svc.settings, svc)), clock, token_queries
    event.remove(engine, "before_cursor_execute", count)


def test_a_verified_token_costs_no_query_until_it_expires(cached, session, team):
    client, clock, token_queries = cached
    assert client.get(f"{API}/runs", headers=team.headers).status_code == 200
    assert len(token_queries) == 1
    for _ in range(3):
        assert client.get(f"{API}/runs", headers=team.headers).status_code == 200
    assert len(token_queries) == 1
    clock.now += 5
    assert client.get(f"{API}/runs", headers=team.headers).status_code == 200
    assert len(token_queries) == 2


def test_a_revoked_token_is_refused_once_its_entry_expires(cached, session, team):
    client, clock, _ = cached
    assert client.get(f"{API}/runs", headers=team.headers).status_code == 200
    (row,) = store_teams.list_tokens(session, team_id=team.team_id)
    store_teams.revoke_token(session, token_id=row.id)  # as `flowdppo token revoke` does, from another process
    clock.now += 4.9
    assert client.get(f"{API}/runs", headers=team.headers).status_code == 200  # within AUTH_CACHE_SECONDS
    clock.now += 0.1
    assert client.get(f"{API}/runs", headers=team.headers).status_code == 401


def test_unknown_tokens_are_asked_every_time(cached):
    client, _, token_queries = cached
    forged = {"Authorization": f"Bearer {store_teams.TOKEN_SCHEME}_abcdefgh_forged"}
    for _ in range(3):
        assert client.get(f"{API}/runs", headers=forged).status_code == 401
    assert len(token_queries) == 3
