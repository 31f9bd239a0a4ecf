"""Dashboard members: the operator CLI (`retouch members create|set-password`), argon2 password
checks, and server-side sessions that end on sign-out and on a password reset."""

from __future__ import annotations

import json

import pytest

from retouch.serving.core.errors import Unauthorized
from retouch.serving.core import members
from retouch.serving.core.db import transaction



def test_members_cli_sign_in_and_password_reset(cli):
    account = cli("accounts", "create", "--name", "Acme", "--plan", "plus")
    member = cli("members", "create", "--account", account["id"], "--email", " Ann@Example.com",
                 "--password", "first password")
    assert member["email"] == "ann@example.com" and member["account_id"] == account["id"]
    assert "password" not in json.dumps(member)
    duplicate = cli("members", "create", "--account", account["id"], "--email",
                    "ann@example.com", "--password", "another one", ok=False)
    assert duplicate["error"]["code"] == "invalid_input"
    short = cli("members", "create", "--account", account["id"], "--email", "b@example.com",
                "--password", "short", ok=False)
    assert short["error"]["details"]["field"] == "password"

    factory = cli.session_factory()
    with transaction(factory) as session:
        signed_in = members.verify_credentials(session, "ANN@example.com", "first password")
        assert signed_in.password_hash.startswith("$argon2id$")
        _, token = members.start_session(session, signed_in)
        with pytest.raises(Unauthorized):
            members.verify_credentials(session, "ann@example.com", "wrong password")
        with pytest.raises(Unauthorized):  # the same answer for an unknown address
            members.verify_credentials(session, "nobody@example.com", "first password")
    with factory() as session:
        current = members.signed_in_member(session, token)
        assert current.email == "ann@example.com" and current.account_id == account["id"]
        assert members.signed_in_member(session, token + "x") is None

    cli("members", "set-password", "--email", "ann@example.com", "--password", "second password")
    with transaction(factory) as session:
        assert members.signed_in_member(session, token) is None  # the reset ended the session
        members.verify_credentials(session, "ann@example.com", "second password")
        member_row = members.get_member_by_email(session, "ann@example.com")
        _, token = members.start_session(session, member_row)
        members.end_session(session, token)
        assert members.signed_in_member(session, token) is None
