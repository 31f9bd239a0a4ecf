"""Every one of the seed's 13 error codes through HTTP, with the exact error shape."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy.orm import sessionmaker

from retouch.serving.core.errors import ERROR_STATUS
from retouch.serving.core.db import make_engine, transaction
from retouch.serving.core.keys import set_key_status

from api_fixtures import GENERATOR_BODY, assert_error


def test_the_seed_has_13_codes_with_their_statuses():
    assert ERROR_STATUS == {
        "unauthorized": 401, "forbidden": 403, "subscription_required": 402,
        "invalid_input": 400, "insufficient_credits": 402, "queue_limit_exceeded": 429,
        "monthly_budget_exceeded": 402, "total_budget_exceeded": 402,
        "per_request_limit_exceeded": 402, "tool_not_allowed": 403,
        "rate_limit_exceeded": 429, "idempotency_conflict": 409, "service_unavailable": 503}


def test_unauthorized_missing_malformed_and_unknown_keys(api):
    assert_error(api.client.get("/api/v1/credits"), 401, "unauthorized")
    assert_error(api.client.get("/api/v1/credits", headers={"Authorization": "Basic abc"}),
                 401, "unauthorized")
    assert_error(api.client.get("/api/v1/credits", headers=api.headers("wx_live_nope")),
                 401, "unauthorized")
    aix_key = api.key(surface="aixpose")[1]
    assert_error(api.client.get("/api/v1/credits", headers=api.headers(aix_key)),
                 401, "unauthorized")


def test_a_key_used_moments_ago_is_refused_at_once_once_paused_or_revoked(api):
    """Keys verified moments ago are cached (`keys.VERIFIED_KEYS`); pausing or revoking clears
    the cache, and a key revoked where this process cannot see it is still never charged."""
    from sqlalchemy import update

    from retouch.serving.core.keys import VERIFIED_KEYS, hash_secret
    from retouch.serving.core.tables import Account, ApiKey

    for status in ("paused", "revoked"):
        key_id, secret = api.key()
        assert api.client.get("/api/v1/credits", headers=api.headers(secret)).status_code == 200
        with transaction(api.services.session_factory) as session:
            set_key_status(session, key_id, status)
        error = assert_error(api.generate(secret, GENERATOR_BODY), 403, "forbidden")
        assert error["details"]["reason"] == status

    # Revoked by another process (a Core UPDATE this process's cache never hears of).
    key_id, secret = api.key()
    assert api.generate(secret, GENERATOR_BODY).status_code == 201
    with api.services.engine.begin() as conn:
        conn.execute(update(ApiKey.__table__).where(ApiKey.__table__.c.id == key_id)
                     .values(status="revoked"))
        account_id = conn.execute(ApiKey.__table__.select()
                                  .where(ApiKey.__table__.c.id == key_id)).one().account_id
        before = conn.scalar(Account.__table__.select().with_only_columns(
            Account.__table__.c.credit_balance).where(Account.__table__.c.id == account_id))
    assert VERIFIED_KEYS.get(hash_secret(secret)) is not None  # still cached here
    error = assert_error(api.generate(secret, GENERATOR_BODY), 403, "forbidden")
    assert error["details"]["reason"] == "revoked"
    with api.services.engine.connect() as conn:
        after = conn.scalar(Account.__table__.select().with_only_columns(
            Account.__table__.c.credit_balance).where(Account.__table__.c.id == account_id))
    assert after == before


def test_forbidden_paused_revoked_expired_and_missing_scope(api):
    for status in ("paused", "revoked"):
        key_id, secret = api.key()
        with transaction(api.services.session_factory) as session:
            set_key_status(session, key_id, status)
        error = assert_error(api.client.get("/api/v1/credits", headers=api.headers(secret)),
                             403, "forbidden")
        assert error["details"]["reason"] == status
    _, expired = api.key(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    error = assert_error(api.client.get("/api/v1/credits", headers=api.headers(expired)),
                         403, "forbidden")
    assert error["details"]["reason"] == "expired"
    _, reader = api.key(scopes=["generations:read"])
    error = assert_error(api.generate(reader, GENERATOR_BODY), 403, "forbidden")
    assert error["details"] == {"required_scope": "generations:create"}
    assert "generations:create" in error["message"]


def test_subscription_required_for_a_free_plan(api):
    _, secret = api.key(api.account(plan="free"))
    error = assert_error(api.generate(secret, GENERATOR_BODY), 402, "subscription_required")
    assert error["details"] == {"plan": "free"}


def test_invalid_input_names_the_field(api):
    _, secret = api.key()
    body = {"tool": "generator", "input": {}, "options": {}}
    assert_error(api.generate(secret, body), 400, "invalid_input", field="input.prompt")
    body = {"tool": "generator", "input": {"prompt": "x"}, "options": {"aspect_ratio": "5:1"}}
    assert_error(api.generate(secret, body), 400, "invalid_input", field="options.aspect_ratio")
    body = {"tool": "photographer", "input": {"main_image": "https://example.com/a.png"},
            "options": {"mode": "angle_change"}}
    assert_error(api.generate(secret, body), 400, "invalid_input", field="input.angle")
    assert_error(api.generate(secret, {"tool": "painter"}), 400, "invalid_input", field="tool")
    malformed = api.client.post("/api/v1/generations", content=b"{not json",
                                headers=api.headers(secret, **{"Content-Type":
                                                               "application/json"}))
    assert_error(malformed, 400, "invalid_input", field="body")
    assert_error(api.client.get("/api/v1/generations?limit=abc", headers=api.headers(secret)),
                 400, "invalid_input", field="limit")
    # Unknown routes and wrong methods keep the error shape.
    assert_error(api.client.get("/api/v1/nothing-here"), 404, "invalid_input")
    assert_error(api.client.delete("/api/v1/credits"), 405, "invalid_input")


def test_insufficient_credits(api):
    _, secret = api.key(api.account(credits=39))
    error = assert_error(api.generate(secret, GENERATOR_BODY), 402, "insufficient_credits")
    assert error["details"] == {"balance": 39, "cost": 40}


def test_queue_limit_exceeded_uses_the_seed_wording(api):
    _, secret = api.key(api.account(plan="plus"))
    upload = api.upload(secret)
    carousel = {"tool": "photographer", "input": {"main_image": {"upload_id": upload["id"]}},
                "options": {"mode": "carousel", "quality": "medium", "aspect_ratio": "4:5"}}
    for _ in range(2):
        assert api.generate(secret, carousel).status_code == 201
    error = assert_error(api.generate(secret, carousel), 429, "queue_limit_exceeded")
    assert error["message"] == ("Your plus plan allows 4 active generation slots at once. "
                                "This request needs 2 slots.")
    assert error["details"] == {"active": 4, "limit": 4, "plan": "plus", "requiredSlots": 2}


def test_monthly_total_and_per_request_budgets(api):
    _, monthly = api.key(monthly_budget=50)
    assert api.generate(monthly, GENERATOR_BODY).status_code == 201
    error = assert_error(api.generate(monthly, GENERATOR_BODY), 402, "monthly_budget_exceeded")
    assert error["details"]["budget"] == 50 and error["details"]["used"] == 40

    _, total = api.key(total_budget=79)
    assert api.generate(total, GENERATOR_BODY).status_code == 201
    error = assert_error(api.generate(total, GENERATOR_BODY), 402, "total_budget_exceeded")
    assert error["details"] == {"budget": 79, "used": 40, "cost": 40}

    _, per_request = api.key(per_request_limit=100)
    assert api.generate(per_request, GENERATOR_BODY).status_code == 201
    medium = {**GENERATOR_BODY, "options": {"quality": "medium"}}
    error = assert_error(api.generate(per_request, medium), 402, "per_request_limit_exceeded")
    assert error["details"] == {"cost": 110, "limit": 100}


def test_tool_not_allowed(api):
    _, secret = api.key(tools=["upscaler"])
    error = assert_error(api.generate(secret, GENERATOR_BODY), 403, "tool_not_allowed")
    assert error["details"]["tool"] == "generator"


def test_rate_limit_exceeded_with_retry_after_and_ratelimit_headers(api):
    _, secret = api.key(rate_limit_per_minute=2)
    first = api.client.get("/api/v1/credits", headers=api.headers(secret))
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert 0 < int(first.headers["RateLimit-Reset"]) <= 60
    second = api.client.get("/api/v1/credits", headers=api.headers(secret))
    assert second.headers["RateLimit-Remaining"] == "0"
    third = api.client.get("/api/v1/credits", headers=api.headers(secret))
    error = assert_error(third, 429, "rate_limit_exceeded")
    assert 0 < int(third.headers["Retry-After"]) <= 60
    assert third.headers["RateLimit-Limit"] == "2"
    assert third.headers["RateLimit-Remaining"] == "0"
    assert error["details"]["limit"] == 2
    # Another key has its own window.
    _, other = api.key(rate_limit_per_minute=2)
    assert api.client.get("/api/v1/credits", headers=api.headers(other)).status_code == 200


def test_idempotency_replay_and_conflict(api):
    _, secret = api.key()
    first = api.generate(secret, GENERATOR_BODY, **{"Idempotency-Key": "shot-001"})
    assert first.status_code == 201
    replay = api.generate(secret, GENERATOR_BODY, **{"Idempotency-Key": "shot-001"})
    assert replay.status_code == 200
    assert replay.json()["generation"]["id"] == first.json()["generation"]["id"]
    balance = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
    assert balance["credits"]["balance"] == 100_000 - 40  # charged once
    other_body = {**GENERATOR_BODY, "input": {"prompt": "a blue sneaker"}}
    error = assert_error(api.generate(secret, other_body, **{"Idempotency-Key": "shot-001"}),
                         409, "idempotency_conflict")
    assert error["details"]["generation_id"] == first.json()["generation"]["id"]


def test_service_unavailable_when_the_database_is_unreachable(api):
    _, secret = api.key()
    dead = make_engine("postgresql://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    api.services.session_factory = sessionmaker(bind=dead)
    try:
        response = api.client.get("/api/v1/credits", headers=api.headers(secret))
    finally:
        dead.dispose()
    error = assert_error(response, 503, "service_unavailable")
    assert "Traceback" not in response.text and "OperationalError" not in response.text
    assert error["details"] is None


class _DownExecutor:
    def start(self):
        pass

    def stop(self):
        pass

    def available(self):
        return False


def test_service_unavailable_when_the_executor_is_down(api):
    _, secret = api.key()
    api.services.executor = _DownExecutor()
    assert_error(api.generate(secret, GENERATOR_BODY), 503, "service_unavailable")
    credits = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()["credits"]
    assert credits["balance"] == 100_000 and credits["queue"]["active"] == 0  # nothing reserved
