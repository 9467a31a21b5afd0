"""Teams and tokens: only a hash is stored; authentication accepts the live token and nothing else."""

from __future__ import annotations

from store import teams
from store.models import ApiToken


def test_create_and_find_team(session):
    team = teams.create_team(session, name="vision")
    assert teams.get_team_by_name(session, name="vision").id == team.id
    assert teams.get_team(session, team_id=team.id).name == "vision"
    assert teams.get_team_by_name(session, name="nobody") is None


def test_token_is_stored_hashed_and_authenticates(session):
    team = teams.create_team(session, name="t")
    row, plaintext = teams.create_token(session, team_id=team.id, name="ci", is_admin=True)
    stored = session.get(ApiToken, row.id)
    assert plaintext not in (stored.token_hash, stored.prefix)
    assert stored.token_hash == teams.hash_token(plaintext) and len(stored.token_hash) == 64
    assert plaintext.startswith(f"fdp_{stored.prefix}_")
    found = teams.authenticate_token(session, plaintext=plaintext)
    assert found.id == row.id and found.is_admin and found.team.name == "t"
    assert found.last_used_at is not None


def test_wrong_malformed_and_revoked_tokens_are_refused(session):
    team = teams.create_team(session, name="t")
    other = teams.create_team(session, name="other")
    row, plaintext = teams.create_token(session, team_id=team.id)
    assert teams.authenticate_token(session, plaintext=plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    for bad in ("", "garbage", "fdp_", "fdp_nope_secret", "Bearer " + plaintext):
        assert teams.authenticate_token(session, plaintext=bad) is None
    assert teams.revoke_token(session, token_id=row.id, team_id=other.id) is None  # another team cannot revoke
    assert teams.authenticate_token(session, plaintext=plaintext) is not None
    assert teams.revoke_token(session, token_id=row.id, team_id=team.id).revoked_at is not None
    assert teams.authenticate_token(session, plaintext=plaintext) is None
    assert [t.id for t in teams.list_tokens(session, team_id=team.id)] == [row.id]
