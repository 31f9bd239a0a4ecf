"""The operator commands `retouch accounts ...` and `retouch keys ...` with `--json`."""

from __future__ import annotations

import pytest

from retouch.serving.core import keys
from retouch.serving.core.db import transaction



def test_accounts_and_keys_commands(cli):
    account = cli("accounts", "create", "--name", "Acme", "--plan", "plus", "--credits", "1000")
    assert (account["plan"], account["credit_balance"], account["slot_limit"]) == ("plus", 1000, 4)
    credited = cli("accounts", "credit", account["id"], "250")
    assert credited["credit_balance"] == 1250
    created = cli("keys", "create", "--account", account["id"], "--name", "ci",
                  "--scope", "generations:create", "--scope", "generations:read",
                  "--tool", "generator", "--monthly-budget", "500", "--total-budget", "2000",
                  "--per-request-limit", "200", "--rate-limit", "30",
                  "--expires-at", "2099-01-01T00:00:00Z")
    assert created["secret"].startswith("wx_live_") and created["status"] == "active"
    assert created["scopes"] == ["generations:create", "generations:read"]
    assert created["allowed_tools"] == ["generator"]
    assert (created["monthly_budget"], created["total_budget"], created["per_request_limit"],
            created["rate_limit_per_minute"]) == (500, 2000, 200, 30)
    assert created["expires_at"] == "2099-01-01T00:00:00Z"

    sf = cli.session_factory()
    with transaction(sf) as session:
        assert keys.authenticate(session, created["secret"]).id == created["id"]

    assert cli("keys", "pause", created["id"])["status"] == "paused"
    assert cli("keys", "resume", created["id"])["status"] == "active"
    listed = cli("keys", "list", "--account", account["id"])["keys"]
    assert [k["id"] for k in listed] == [created["id"]] and "secret" not in listed[0]
    assert cli("keys", "revoke", created["id"])["status"] == "revoked"
    error = cli("keys", "resume", created["id"], ok=False)
    assert error["error"]["code"] == "invalid_input"
    with transaction(sf) as session, pytest.raises(Exception) as caught:
        keys.authenticate(session, created["secret"])
    assert getattr(caught.value, "code", None) == "forbidden"

    aix = cli("keys", "create", "--account", account["id"], "--surface", "aixpose")
    assert aix["secret"].startswith("aix_live_")


def test_cli_errors_name_the_problem(cli):
    assert cli("accounts", "credit", "acct_missing", "5", ok=False)["error"]["code"] == \
        "invalid_input"
    bad_plan = cli("accounts", "create", "--name", "x", "--plan", "gold", ok=False)
    assert "plan" in bad_plan["error"]["message"]
    account = cli("accounts", "create", "--name", "x")
    bad_expiry = cli("keys", "create", "--account", account["id"], "--expires-at", "soon",
                     ok=False)
    assert bad_expiry["error"]["details"] == {"field": "expires_at"}
