"""Job store: atomic reservation under concurrency, idempotency, and the job lifecycle with
settlement. Runs on SQLite, and on PostgreSQL too when RETOUCH_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, update

from retouch.serving.core.errors import (IdempotencyConflict, InsufficientCredits, InvalidInput,
                                      MonthlyBudgetExceeded, PerRequestLimitExceeded,
                                      QueueLimitExceeded, RetouchError, SubscriptionRequired,
                                      TotalBudgetExceeded)
from retouch.serving.tasks import parse_request
from retouch.serving.core import accounts, jobs, keys
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import (Account, ApiKey, Generation, IdempotencyRecord,
                                         LedgerEntry)


GENERATOR = {"tool": "generator", "input": {"prompt": "a red sneaker"},
             "options": {"quality": "medium"}}  # 110 credits, 1 slot
CAROUSEL = {"tool": "photographer", "input": {"main_image": "https://example.com/a.png"},
            "options": {"mode": "carousel", "quality": "low"}}  # 10 x 40 + 10 = 410, 2 slots


def make_key(sf, *, plan="pro", credits=100_000, **key_options):
    with transaction(sf) as session:
        account = accounts.create_account(session, "Acme", plan, credits)
        key, _ = keys.create_key(session, account.id, **key_options)
    return account.id, key


def add_key(sf, account_id, **key_options):
    with transaction(sf) as session:
        return keys.create_key(session, account_id, **key_options)[0]


def create(sf, key, body=GENERATOR, **kwargs):
    return jobs.create_job(sf, key, parse_request(body), body, **kwargs)


def account_state(sf, account_id):
    with sf() as session:
        account = session.get_one(Account, account_id)
        ledger_sum = session.scalar(select(func.sum(LedgerEntry.amount))
                                    .where(LedgerEntry.account_id == account_id))
        kinds = session.scalars(select(LedgerEntry.kind).where(
            LedgerEntry.account_id == account_id).order_by(LedgerEntry.id)).all()
        jobs_by_status = dict(session.execute(
            select(Generation.status, func.count()).where(Generation.account_id == account_id)
            .group_by(Generation.status)).all())
        return account.credit_balance, account.active_slots, int(ledger_sum), kinds, jobs_by_status


def key_usage(sf, key_id):
    with sf() as session:
        key = session.get_one(ApiKey, key_id)
        return key.monthly_used, key.total_used


def race(n, fn):
    """Run `fn` in n threads released together; returns results or raised RetouchErrors."""
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        try:
            return fn()
        except RetouchError as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


# ---- atomic reservation ------------------------------------------------------------------------
def test_concurrent_creates_respect_total_budget(sf):
    account_id, key = make_key(sf, total_budget=3 * 110)
    results = race(30, lambda: create(sf, key))
    created = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if isinstance(r, RetouchError)]
    assert len(created) == 3 and len({g.id for g, _ in created}) == 3
    assert len(errors) == 27 and {e.code for e in errors} == {"total_budget_exceeded"}
    balance, slots, ledger_sum, kinds, by_status = account_state(sf, account_id)
    assert balance == 100_000 - 330 == ledger_sum
    assert slots == 3 and by_status == {"pending": 3} and kinds.count("reserve") == 3
    assert key_usage(sf, key.id) == (330, 330)


def test_concurrent_creates_respect_monthly_budget(sf):
    account_id, key = make_key(sf, monthly_budget=3 * 110)
    results = race(30, lambda: create(sf, key))
    assert sum(isinstance(r, tuple) for r in results) == 3
    assert {r.code for r in results if isinstance(r, RetouchError)} == {"monthly_budget_exceeded"}
    assert key_usage(sf, key.id) == (330, 330)


def test_concurrent_creates_respect_account_balance(sf):
    account_id, key = make_key(sf, plan="pro", credits=3 * 110)
    results = race(30, lambda: create(sf, key))
    assert sum(isinstance(r, tuple) for r in results) == 3
    errors = [r for r in results if isinstance(r, RetouchError)]
    assert len(errors) == 27 and {e.code for e in errors} == {"insufficient_credits"}
    assert errors[0].details == {"balance": 0, "cost": 110}
    balance, slots, ledger_sum, _, _ = account_state(sf, account_id)
    assert balance == 0 == ledger_sum and slots == 3
    # The failed attempts rolled back their key budget charges too.
    assert key_usage(sf, key.id) == (330, 330)


def test_concurrent_creates_respect_slot_limit(sf):
    account_id, key = make_key(sf, plan="plus")
    results = race(30, lambda: create(sf, key))
    assert sum(isinstance(r, tuple) for r in results) == 4
    errors = [r for r in results if isinstance(r, RetouchError)]
    assert {e.code for e in errors} == {"queue_limit_exceeded"} and len(errors) == 26
    assert errors[0].details == {"active": 4, "limit": 4, "plan": "plus", "requiredSlots": 1}
    assert errors[0].http_status == 429
    balance, slots, ledger_sum, _, _ = account_state(sf, account_id)
    assert slots == 4 and balance == 100_000 - 4 * 110 == ledger_sum


def test_a_create_that_waits_for_its_account_row_is_still_accepted(sf):
    """While another transaction holds the account row (a job settling frees its slots), a
    create waits for it, then reserves as usual. On PostgreSQL the reservation is one statement
    of data-modifying CTEs, whose account UPDATE re-checks its row after the wait and must
    still see the key's charge."""
    account_id, key = make_key(sf, plan="pro")
    holder = sf()
    holder.execute(update(Account).where(Account.id == account_id)
                   .values(active_slots=Account.active_slots))  # row locked until commit
    result: list = []
    waiting = threading.Thread(target=lambda: result.append(race(1, lambda: create(sf, key))[0]))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive()  # the create waits for the row
    holder.commit()
    holder.close()
    waiting.join(30)
    assert isinstance(result[0], tuple), (result[0].code, result[0].message)
    balance, slots, ledger_sum, _, _ = account_state(sf, account_id)
    assert slots == 1 and balance == 100_000 - 110 == ledger_sum


def test_a_reservation_refused_while_a_slot_is_freed_is_tried_again(sf, monkeypatch):
    """PostgreSQL reads each statement's own snapshot: a slot freed (a job settling) between
    the refused reservation and the read of the limits leaves nothing that refuses. The create
    is then tried again, and succeeds, instead of blaming a limit that is not reached (before:
    `insufficient_credits` with a balance far above the cost)."""
    with sf() as session:
        if session.get_bind().dialect.name == "sqlite":
            pytest.skip("SQLite's write transaction is exclusive: nothing settles mid-create")
    account_id, key = make_key(sf, plan="standard")  # 2 slots
    create(sf, key)
    create(sf, key)
    refusal = jobs._raise_refusal
    refusals = []

    def slot_freed_first(*args, **kwargs):  # between the refused UPDATE and the read
        refusals.append(1)
        if len(refusals) == 1:
            with transaction(sf) as other:
                other.execute(update(Account).where(Account.id == account_id)
                              .values(active_slots=Account.active_slots - 1))
        return refusal(*args, **kwargs)

    monkeypatch.setattr(jobs, "_raise_refusal", slot_freed_first)
    generation, _ = create(sf, key)
    assert generation.status == "pending" and len(refusals) == 1
    balance, slots, ledger_sum, _, _ = account_state(sf, account_id)
    assert slots == 2 and balance == 100_000 - 3 * 110 == ledger_sum
    assert key_usage(sf, key.id)[1] == 3 * 110  # the refused attempt's key charge rolled back


def test_carousel_holds_two_slots_and_seed_message(sf):
    account_id, key = make_key(sf, plan="plus")
    first, _ = create(sf, key, CAROUSEL)
    create(sf, key, CAROUSEL)
    assert first.slots == 2 and first.cost_credits == 410
    with pytest.raises(QueueLimitExceeded) as caught:
        create(sf, key, CAROUSEL)
    assert caught.value.message == ("Your plus plan allows 4 active generation slots at once. "
                                    "This request needs 2 slots.")
    assert caught.value.details == {"active": 4, "limit": 4, "plan": "plus", "requiredSlots": 2}
    job = jobs.lease_next_job(sf, "w1", 30)
    assert job.id == first.id and jobs.complete_job(sf, job.id, "w1", [f"{job.id}/{i}.png"
                                                                       for i in range(10)])
    assert account_state(sf, account_id)[1] == 2
    create(sf, key, CAROUSEL)  # two slots are free again


def test_plan_and_per_request_checks_charge_nothing(sf):
    free_account, free_key = make_key(sf, plan="free")
    with pytest.raises(SubscriptionRequired):
        create(sf, free_key)
    account_id, key = make_key(sf, per_request_limit=100)
    with pytest.raises(PerRequestLimitExceeded) as caught:
        create(sf, key)
    assert caught.value.details == {"cost": 110, "limit": 100}
    low = {"tool": "generator", "input": {"prompt": "x"}, "options": {"quality": "low"}}
    assert create(sf, key, low)[0].cost_credits == 40
    for acct, expected in ((free_account, 100_000), (account_id, 100_000 - 40)):
        balance, slots, ledger_sum, _, _ = account_state(sf, acct)
        assert balance == expected == ledger_sum


def test_monthly_budget_rolls_over_with_the_month(sf):
    account_id, key = make_key(sf, monthly_budget=110)
    with transaction(sf) as session:
        session.execute(update(ApiKey).where(ApiKey.id == key.id)
                        .values(monthly_used=110, monthly_period="2000-01"))
    job, _ = create(sf, key)  # last period's usage does not count
    assert key_usage(sf, key.id) == (110, 110)
    with pytest.raises(MonthlyBudgetExceeded):
        create(sf, key)
    with pytest.raises(TotalBudgetExceeded):
        create(sf, add_key(sf, account_id, total_budget=100))


# ---- idempotency -------------------------------------------------------------------------------
def test_idempotent_replay_charges_once_and_conflicts_on_new_body(sf):
    account_id, key = make_key(sf)
    job, replayed = create(sf, key, idempotency_key="shot-1")
    reordered = {"options": {"quality": "medium"}, "input": {"prompt": "a red sneaker"},
                 "tool": "generator"}
    again, replayed_again = create(sf, key, reordered, idempotency_key="shot-1")
    assert (replayed, replayed_again) == (False, True) and again.id == job.id
    with pytest.raises(IdempotencyConflict) as caught:
        create(sf, key, {**GENERATOR, "input": {"prompt": "blue"}}, idempotency_key="shot-1")
    assert caught.value.http_status == 409
    balance, slots, ledger_sum, kinds, _ = account_state(sf, account_id)
    assert balance == 100_000 - 110 == ledger_sum and slots == 1 and kinds.count("reserve") == 1


def test_idempotency_is_scoped_per_key_and_expires(sf):
    account_id, key = make_key(sf)
    other = add_key(sf, account_id)
    first, _ = create(sf, key, idempotency_key="k")
    second, replayed = create(sf, other, idempotency_key="k")
    assert not replayed and second.id != first.id
    third, replayed = create(sf, key, idempotency_key="k", idempotency_ttl_hours=0)
    assert not replayed and third.id != first.id
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 2
    assert account_state(sf, account_id)[0] == 100_000 - 3 * 110


def test_concurrent_identical_requests_make_one_job(sf):
    account_id, key = make_key(sf)
    results = race(10, lambda: create(sf, key, idempotency_key="same"))
    assert all(isinstance(r, tuple) for r in results), results
    assert len({g.id for g, _ in results}) == 1
    assert sorted(replayed for _, replayed in results) == [False] + [True] * 9
    balance, slots, ledger_sum, kinds, _ = account_state(sf, account_id)
    assert balance == 100_000 - 110 == ledger_sum and slots == 1 and kinds == ["topup", "reserve"]


def test_idempotency_key_is_validated(sf):
    _, key = make_key(sf)
    with pytest.raises(InvalidInput) as caught:
        create(sf, key, idempotency_key="x" * 256)
    assert caught.value.field == "Idempotency-Key"


# ---- lifecycle and settlement ------------------------------------------------------------------
def test_lease_heartbeat_complete(sf):
    account_id, key = make_key(sf)
    first, _ = create(sf, key)
    second, _ = create(sf, key, {"tool": "upscaler", "input": {"image": "https://e.com/a.png"},
                                 "options": {"scale": "4k"}})
    assert second.cost_credits == 120
    assert jobs.lease_next_job(sf, "w1", 30, tools=["editor"]) is None
    job = jobs.lease_next_job(sf, "w1", 30)
    assert (job.id, job.status, job.attempts, job.lease_owner) == (first.id, "processing", 1, "w1")
    assert jobs.lease_next_job(sf, "w2", 30, tools=["upscaler"]).id == second.id
    assert jobs.lease_next_job(sf, "w3", 30) is None
    assert jobs.heartbeat(sf, job.id, "w1", 0.5, 30)
    assert not jobs.heartbeat(sf, job.id, "w2", 0.9, 30)
    with sf() as session:
        assert jobs.get_generation(session, account_id, job.id).progress == 0.5
    assert not jobs.complete_job(sf, job.id, "w2", ["x.png"])
    assert jobs.complete_job(sf, job.id, "w1", [f"{job.id}/0.png"])
    assert not jobs.complete_job(sf, job.id, "w1", ["again.png"])
    assert not jobs.fail_job(sf, job.id, "w1", "service_unavailable", "late")
    assert not jobs.heartbeat(sf, job.id, "w1", 0.7, 30)
    with sf() as session:
        done = jobs.get_generation(session, account_id, job.id)
        assert (done.status, done.progress, done.output_keys) == ("completed", 1.0,
                                                                  [f"{job.id}/0.png"])
        assert done.finished_at >= done.started_at >= done.created_at
    balance, slots, ledger_sum, kinds, _ = account_state(sf, account_id)
    assert balance == 100_000 - 230 == ledger_sum and slots == 1
    assert kinds == ["topup", "reserve", "reserve"]


def test_fail_refunds_credits_budgets_and_slots_once(sf):
    account_id, key = make_key(sf, monthly_budget=1000, total_budget=1000)
    created, _ = create(sf, key, CAROUSEL)
    job = jobs.lease_next_job(sf, "w1", 30)
    assert key_usage(sf, key.id) == (410, 410)
    assert jobs.fail_job(sf, job.id, "w1", "invalid_input", "input.main_image: not an image")
    assert not jobs.fail_job(sf, job.id, "w1", "invalid_input", "twice")
    balance, slots, ledger_sum, kinds, by_status = account_state(sf, account_id)
    assert balance == 100_000 == ledger_sum and slots == 0 and by_status == {"failed": 1}
    assert kinds == ["topup", "reserve", "refund"]
    assert key_usage(sf, key.id) == (0, 0)
    with sf() as session:
        failed = jobs.get_generation(session, account_id, job.id)
        assert (failed.error_code, failed.error) == ("invalid_input",
                                                     "input.main_image: not an image")
        refund = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "refund")).one()
        assert (refund.amount, refund.balance_after, refund.generation_id) == (410, 100_000, job.id)


def test_expired_lease_retries_then_fails_with_one_refund(sf):
    account_id, key = make_key(sf)
    created, _ = create(sf, key)
    job = jobs.lease_next_job(sf, "w1", 0)
    assert jobs.expire_leases(sf, max_attempts=2) == 1
    with sf() as session:
        assert session.get_one(Generation, job.id).status == "pending"
    assert not jobs.complete_job(sf, job.id, "w1", ["stale.png"])  # the first worker lost it
    retried = jobs.lease_next_job(sf, "w2", 0)
    assert (retried.id, retried.attempts) == (job.id, 2)
    assert jobs.expire_leases(sf, max_attempts=2) == 1
    assert jobs.expire_leases(sf, max_attempts=2) == 0
    assert not jobs.fail_job(sf, job.id, "w2", "service_unavailable", "late")
    balance, slots, ledger_sum, kinds, by_status = account_state(sf, account_id)
    assert balance == 100_000 == ledger_sum and slots == 0 and by_status == {"failed": 1}
    assert kinds == ["topup", "reserve", "refund"]
    with sf() as session:
        assert session.get_one(Generation, job.id).error_code == "service_unavailable"


def test_live_lease_is_not_expired(sf):
    _, key = make_key(sf)
    create(sf, key)
    job = jobs.lease_next_job(sf, "w1", 60)
    assert jobs.expire_leases(sf, max_attempts=2) == 0
    assert jobs.heartbeat(sf, job.id, "w1", 0.2, 60)


def test_concurrent_leases_claim_each_job_once(sf):
    _, key = make_key(sf)
    for _ in range(3):
        create(sf, key)
    results = race(8, lambda: jobs.lease_next_job(sf, str(uuid.uuid4()), 30))
    claimed = [job.id for job in results if job is not None]
    assert len(claimed) == 3 and len(set(claimed)) == 3


def test_list_generations_pages_and_filters(sf):
    account_id, key = make_key(sf)
    other_account, other_key = make_key(sf)
    made = [create(sf, key)[0].id for _ in range(5)]
    create(sf, other_key)
    with sf() as session:
        seen, cursor = [], None
        while True:
            page, cursor = jobs.list_generations(session, account_id, limit=2, cursor=cursor)
            seen += [job.id for job in page]
            if cursor is None:
                break
        assert seen == made[::-1]
        assert jobs.list_generations(session, account_id, status="completed")[0] == []
        assert len(jobs.list_generations(session, account_id, tool="generator")[0]) == 5
        assert jobs.list_generations(session, account_id, surface="aixpose")[0] == []
        for bad in ({"cursor": "not-a-cursor"}, {"limit": 0}, {"status": "done"}):
            with pytest.raises(InvalidInput) as caught:
                jobs.list_generations(session, account_id, **bad)
            assert caught.value.field == next(iter(bad))
        with pytest.raises(InvalidInput) as caught:
            jobs.get_generation(session, other_account, made[0], field="input.main_image")
        assert caught.value.http_status == 404 and caught.value.field == "input.main_image"
