"""API keys, accounts, pricing, credit summaries and migrations of the serving core."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from retouch.serving.core.errors import (Forbidden, InvalidInput, NotFound, ToolNotAllowed,
                                      Unauthorized)
from retouch.serving.tasks import parse_request, price
from retouch.serving.core import accounts, credits, jobs, keys
from retouch.serving.core.db import MIGRATIONS_DIR, run_migrations, transaction, utcnow
from retouch.serving.core.tables import ApiKey, Base, LedgerEntry


@pytest.fixture
def account_id(sf):
    with transaction(sf) as session:
        return accounts.create_account(session, "Acme", "standard", 1000).id


def new_key(sf, account_id, **options):
    with transaction(sf) as session:
        return keys.create_key(session, account_id, **options)


def authenticate(sf, secret, surface="wixma"):
    with transaction(sf) as session:
        return keys.authenticate(session, secret, surface)


def newest_migration() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def test_migrations_create_every_table(db_engine, database_url):
    run_migrations(database_url)  # a second run is a no-op
    names = set(inspect(db_engine).get_table_names())
    assert {"accounts", "api_keys", "uploads", "generations", "ledger_entries",
            "idempotency_records", "alembic_version"} <= names
    with db_engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        # The database is at the newest migration, and that migration matches the ORM tables.
        assert version == newest_migration()
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    columns = {c["name"] for c in inspect(db_engine).get_columns("generations")}
    assert {"request_hash", "lease_owner", "lease_expires_at", "output_keys", "slots"} <= columns


def test_key_secret_format_and_hash(sf, account_id):
    key, secret = new_key(sf, account_id, name="ci")
    assert secret.startswith("wx_live_") and len(secret) > 40
    assert key.id.startswith("key_") and secret.startswith(key.prefix) and len(key.prefix) == 12
    assert key.secret_hash == keys.hash_secret(secret) and secret not in key.secret_hash
    assert key.scopes == list(keys.WIXMA_SCOPES) and key.allowed_tools is None
    aix_key, aix_secret = new_key(sf, account_id, surface="aixpose")
    assert aix_secret.startswith("aix_live_")
    assert authenticate(sf, secret).id == key.id
    assert authenticate(sf, aix_secret, "aixpose").id == aix_key.id
    with sf() as session:
        assert session.get_one(ApiKey, key.id).last_used_at is not None


@pytest.mark.parametrize("secret", [None, "", "Bearer x", "wx_live_unknown", "aix_live_abc"])
def test_unknown_or_malformed_secrets_are_unauthorized(sf, account_id, secret):
    with pytest.raises(Unauthorized) as caught:
        authenticate(sf, secret)
    assert caught.value.http_status == 401


def test_key_of_another_surface_is_unauthorized(sf, account_id):
    _, aix_secret = new_key(sf, account_id, surface="aixpose")
    _, wx_secret = new_key(sf, account_id)
    with pytest.raises(Unauthorized):
        authenticate(sf, wx_secret, "aixpose")


def test_pause_resume_revoke_and_expiry(sf, account_id):
    key, secret = new_key(sf, account_id)
    for status, reason in (("paused", "paused"), ("revoked", "revoked")):
        with transaction(sf) as session:
            keys.set_key_status(session, key.id, status)
        with pytest.raises(Forbidden) as caught:
            authenticate(sf, secret)
        assert caught.value.details == {"reason": reason} and caught.value.http_status == 403
        if status == "paused":
            with transaction(sf) as session:
                keys.set_key_status(session, key.id, "active")
            assert authenticate(sf, secret).id == key.id
    with pytest.raises(InvalidInput), transaction(sf) as session:
        keys.set_key_status(session, key.id, "active")
    _, expired = new_key(sf, account_id, expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(Forbidden) as caught:
        authenticate(sf, expired)
    assert caught.value.details == {"reason": "expired"}
    _, later = new_key(sf, account_id, expires_at=utcnow() + timedelta(days=1))
    assert authenticate(sf, later).status == "active"


def test_scopes_and_tools(sf, account_id):
    key, _ = new_key(sf, account_id, scopes=["generations:read"], tools=["upscaler"])
    keys.require_scope(key, "generations:read")
    with pytest.raises(Forbidden) as caught:
        keys.require_scope(key, "generations:create")
    assert "generations:create" in caught.value.message
    keys.require_tool(key, "upscaler")
    with pytest.raises(ToolNotAllowed) as caught:
        keys.require_tool(key, "generator")
    assert caught.value.code == "tool_not_allowed"
    for bad in ({"scopes": ["admin"]}, {"tools": ["painter"]}, {"total_budget": -1},
                {"surface": "other"}):
        with pytest.raises(InvalidInput) as caught, transaction(sf) as session:
            keys.create_key(session, account_id, **bad)
        assert caught.value.field == next(iter(bad))
    with pytest.raises(NotFound), transaction(sf) as session:
        keys.create_key(session, "acct_missing")


@pytest.mark.parametrize("body, cost", [
    ({"tool": "generator", "input": {"prompt": "x"}, "options": {"quality": "medium"}}, 110),
    ({"tool": "generator", "input": {"prompt": "x"}, "options": {"quality": "low"}}, 40),
    ({"tool": "editor", "input": {"images": ["https://e.com/a.png"]},
      "options": {"quality": "high"}}, 200),
    ({"tool": "photographer", "input": {"main_image": "https://e.com/a.png"},
      "options": {"mode": "carousel", "quality": "medium"}}, 10 * 110 + 10),
    ({"tool": "photographer", "input": {"main_image": "https://e.com/a.png",
                                        "angle": "eye level, left side"},
      "options": {"mode": "angle_change", "quality": "high"}}, 200),
    ({"tool": "upscaler", "input": {"image": "https://e.com/a.png"}}, 40),
    ({"tool": "upscaler", "input": {"image": "https://e.com/a.png"}, "options": {"scale": 4}}, 80),
    ({"tool": "upscaler", "input": {"image": "https://e.com/a.png"},
      "options": {"scale": "4k"}}, 120),
    ({"tool": "ai_filter", "input": {"image": "https://e.com/a.png", "filter": "noir-bw"},
      "options": {"quality": "low"}}, 40),
])
def test_price_table(body, cost):
    assert price(parse_request(body)) == cost


def test_credit_account_and_ledger(sf, account_id):
    with transaction(sf) as session:
        assert accounts.credit_account(session, account_id, 500, "invoice 7") == 1500
        assert accounts.credit_account(session, account_id, -200, "fix", kind="adjust") == 1300
    for amount, kind in ((0, "topup"), (-5, "topup"), (-5000, "adjust")):
        with pytest.raises(InvalidInput) as caught, transaction(sf) as session:
            accounts.credit_account(session, account_id, amount, kind=kind)
        assert caught.value.field == "amount"
    with sf() as session:
        entries = session.scalars(select(LedgerEntry).order_by(LedgerEntry.id)).all()
        assert [(e.kind, e.amount, e.balance_after) for e in entries] == [
            ("topup", 1000, 1000), ("topup", 500, 1500), ("adjust", -200, 1300)]
        assert accounts.get_account(session, account_id).credit_balance == 1300
        with pytest.raises(NotFound):
            accounts.get_account(session, "acct_missing")
    with pytest.raises(InvalidInput) as caught, transaction(sf) as session:
        accounts.create_account(session, "x", "enterprise")
    assert caught.value.field == "plan"


def test_credit_summary_reports_balance_queue_and_budgets(sf, account_id):
    key, _ = new_key(sf, account_id, monthly_budget=500, total_budget=900, per_request_limit=300)
    body = {"tool": "generator", "input": {"prompt": "x"}}
    jobs.create_job(sf, key, parse_request(body), body)
    with sf() as session:
        summary = credits.credit_summary(session, key)
    assert summary["balance"] == 890
    assert summary["queue"] == {"active": 1, "limit": 2, "plan": "standard"}
    assert summary["key"]["monthly"] == {"used": 110, "limit": 500,
                                         "period": utcnow().strftime("%Y-%m")}
    assert summary["key"]["total"] == {"used": 110, "limit": 900}
    assert summary["key"]["per_request_limit"] == 300


def test_ledger_pages_newest_first(sf, account_id):
    with transaction(sf) as session:
        for amount in (1, 2, 3, 4):
            accounts.credit_account(session, account_id, amount)
    with sf() as session:
        first, cursor = credits.list_ledger(session, account_id, limit=3)
        rest, end = credits.list_ledger(session, account_id, limit=3, cursor=cursor)
        assert [e.amount for e in first + rest] == [4, 3, 2, 1, 1000] and end is None
        assert sum(e.amount for e in first + rest) == \
            accounts.get_account(session, account_id).credit_balance
        with pytest.raises(InvalidInput) as caught:
            credits.list_ledger(session, account_id, cursor="x")
        assert caught.value.field == "cursor"
