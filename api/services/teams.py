"""Who is calling: bearer tokens to a team (tokens are stored hashed by store.teams), admin-only team creation, and
the operator's token commands (`flowdppo token create|list|revoke`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.schemas import TeamPublic, TokenCreated, TokenPublic
from api.services.errors import ConflictError, NotFoundError
from store import teams as store_teams


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a team, through one of its tokens."""

    team_id: int
    team_name: str
    is_admin: bool = False


class TokenCache:
    """Bearer tokens this process verified in the last `ttl` seconds, and whose they are: a burst of requests then
    costs one token query per token per ttl instead of one per request (the query, its hash check and a database
    round trip were ~0.8 ms of CPU of a 5-6 ms GET /runs). Keyed by the token's hash, never the plaintext; unknown
    tokens are not kept; at most `max_entries`, the oldest dropped first. ttl 0 keeps nothing."""

    def __init__(self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self._clock = ttl, max_entries, clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()  # the threadpool's handlers share it

    def get(self, token: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        key = store_teams.hash_token(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[0]:
                del self._entries[key]
                return None
            return entry[1]

    def put(self, token: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[store_teams.hash_token(token)] = (self._clock() + self.ttl, principal)


def authenticate(session: Session, *, token: str) -> Principal | None:
    """The caller behind a bearer token, or None when it is unknown, malformed or revoked."""
    row = store_teams.authenticate_token(session, plaintext=token)
    if row is None:
        return None
    return Principal(team_id=row.team_id, team_name=row.team.name, is_admin=row.is_admin)


def create_team_with_token(session: Session, *, name: str, admin: bool = False) -> TokenCreated:
    """A new team and its first token (admin callers only; the route checks)."""
    if store_teams.get_team_by_name(session, name=name) is not None:
        raise ConflictError(f"team {name!r} already exists")
    team = store_teams.create_team(session, name=name)
    row, plaintext = store_teams.create_token(session, team_id=team.id, name="initial", is_admin=admin)
    return TokenCreated(team=TeamPublic.model_validate(team), token=plaintext, is_admin=row.is_admin)


def create_token(session: Session, *, team_name: str, admin: bool = False, create_team: bool = True) -> TokenCreated:
    """A token for a team, creating the team if needed (the `flowdppo token create` command and `flowdppo up`)."""
    team = store_teams.get_team_by_name(session, name=team_name)
    if team is None:
        if not create_team:
            raise ConflictError(f"no team {team_name!r}")
        team = store_teams.create_team(session, name=team_name)
    row, plaintext = store_teams.create_token(session, team_id=team.id, name="cli", is_admin=admin)
    return TokenCreated(team=TeamPublic.model_validate(team), token=plaintext, is_admin=row.is_admin)


def list_tokens(session: Session, *, team_name: str) -> list[TokenPublic]:
    """Every token of a team, revoked ones included, oldest first (`flowdppo token list`)."""
    team = store_teams.get_team_by_name(session, name=team_name)
    if team is None:
        raise NotFoundError(f"no team {team_name!r}")
    return [TokenPublic.model_validate(t) for t in store_teams.list_tokens(session, team_id=team.id)]


def revoke_token(session: Session, *, token_id: int) -> TokenPublic:
    """Revoke any team's token by id (`flowdppo token revoke`, an operator command); revoking twice is a no-op."""
    row = store_teams.revoke_token(session, token_id=token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id}")
    return TokenPublic.model_validate(row)


def get_team(session: Session, *, team_id: int) -> TeamPublic:
    team = store_teams.get_team(session, team_id=team_id)
    assert team is not None, "an authenticated principal's team exists (cascade deletes its tokens)"
    return TeamPublic.model_validate(team)
