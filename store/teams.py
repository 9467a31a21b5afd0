"""Teams and API tokens: tokens are `fdp_<prefix>_<secret>`, stored as a public prefix plus a sha256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ApiToken, Team, utcnow
from store.session import begin_write

TOKEN_SCHEME = "fdp"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # don't write on every request


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_team(session: Session, *, name: str) -> Team:
    begin_write(session)
    team = Team(name=name)
    session.add(team)
    session.commit()
    return team


def get_team(session: Session, *, team_id: int) -> Team | None:
    return session.get(Team, team_id)


def get_team_by_name(session: Session, *, name: str) -> Team | None:
    return session.scalars(select(Team).where(Team.name == name)).one_or_none()


def create_token(session: Session, *, team_id: int, name: str = "", is_admin: bool = False) -> tuple[ApiToken, str]:
    """A new token for the team. Returns (row, plaintext); the plaintext is shown once and never stored."""
    begin_write(session)
    prefix = secrets.token_hex(6)
    plaintext = f"{TOKEN_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken(team_id=team_id, name=name, prefix=prefix, token_hash=hash_token(plaintext), is_admin=is_admin)
    session.add(token)
    session.commit()
    return token, plaintext


def authenticate_token(session: Session, *, plaintext: str) -> ApiToken | None:
    """The live token row (with `.team` loaded) for a bearer string, or None if unknown, malformed or revoked."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_SCHEME:
        return None
    token = session.scalars(select(ApiToken).where(ApiToken.prefix == parts[1])).one_or_none()
    if token is None or token.revoked_at is not None:
        return None
    if not hmac.compare_digest(token.token_hash, hash_token(plaintext)):
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        begin_write(session)
        token.last_used_at = now
        session.commit()
    return token


def list_tokens(session: Session, *, team_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.team_id == team_id).order_by(ApiToken.id)))


def revoke_token(session: Session, *, token_id: int, team_id: int | None = None) -> ApiToken | None:
    """Revoke a token (idempotent). With team_id, only that team's token; returns None if not found."""
    token = session.get(ApiToken, token_id)
    if token is None or (team_id is not None and token.team_id != team_id):
        return None
    if token.revoked_at is None:
        begin_write(session)
        token.revoked_at = utcnow()
        session.commit()
    return token
