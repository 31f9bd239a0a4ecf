"""Generations: creation with atomic reservation, and the job lifecycle. The ONLY module that
changes a generation's `status`: `pending → processing → completed | failed`.

Money and slots move only through conditional UPDATEs (`... WHERE active_slots + n <= limit`), so
concurrent creates can never over-spend; there is no read-then-write in Python. A create reserves
slots, key budgets and credits and writes the `reserve` ledger entry in one transaction. A terminal
transition (complete or fail) frees the slots, refunds on failure, appends to the ledger and
enqueues the job's events (`job_events.enqueue_job_events`) in one transaction, guarded by
`WHERE status='processing' AND lease_owner=...`, so it happens exactly once. `cancel_job` settles
a pending or processing job the same way (failed, `canceled`, refunded) on its owner's request;
the worker running it learns at once through the job signals, or at its next heartbeat, and
stops at the next denoising step.

Every transition is noted (`job_signals.note`) so that, once it commits, idle dispatchers wake
for new jobs and event streams for changed ones.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from retouch.serving.core.errors import (InsufficientCredits, InvalidInput, JobNotCancellable,
                                      MonthlyBudgetExceeded, NotFound, PerRequestLimitExceeded,
                                      QueueLimitExceeded, ServiceUnavailable,
                                      TotalBudgetExceeded)

from . import idempotency
from .accounts import PAID_PLANS, PLAN_SLOTS, plan_slot_limit, require_paid_plan
from .db import is_sqlite, transaction, utcnow
from .job_events import enqueue_job_events
from .job_signals import note, notify_payload, notify_statement
from .pagination import check_limit, newest_first_page
from .tables import JOB_STATUSES, Account, ApiKey, Generation, LedgerEntry, new_uuid
from ..tasks import TASKS, TaskSpec, request_seed

DEFAULT_IDEMPOTENCY_TTL_HOURS = 24
LIMITS_MOVED_RETRIES = 3  # creates tried again when a settle moved the limits mid-reservation
LEASE_LOST_ERROR = "service_unavailable"
CANCELED_ERROR = "canceled"  # error_code of a job its owner cancelled

SessionFactory = sessionmaker[Session]
_NO_SYNC = {"synchronize_session": False}


def budget_period(now: datetime) -> str:
    """The monthly budget period ("YYYY-MM", UTC) that `now` falls in."""
    return now.strftime("%Y-%m")


# ---- creation -----------------------------------------------------------------------------------
def create_job(session_factory: SessionFactory, key: ApiKey, request, body: dict[str, Any],
               *, idempotency_key: str | None = None, input_image: str | None = None,
               surface: str = "wixma",
               idempotency_ttl_hours: float = DEFAULT_IDEMPOTENCY_TTL_HOURS,
               on_created: Callable[[Session, Generation], None] | None = None,
               ) -> tuple[Generation, bool]:
    """Create a `pending` job for a typed request; returns `(generation, replayed)`.

    One transaction: idempotency check (same key + same body → the existing job, `replayed=True`,
    no charge; different body → `IdempotencyConflict`), paid-plan check, per-request limit, slot
    reservation (`QueueLimitExceeded`), key monthly/total budgets, account credits
    (`InsufficientCredits`), a `reserve` ledger entry and the job row. Any error rolls all of it
    back. `body` is stored as the job's request (the dispatcher re-parses it) and hashed for
    idempotency; `input_image` is the URL shown in responses. `on_created(session, job)` runs
    inside that transaction for a new job (not a replay), so rows a surface keeps beside the job
    (AIXpose pictures) exist if and only if the job does.
    """
    if idempotency_key is not None:
        idempotency_key = idempotency.check_idempotency_key(idempotency_key)
    body_hash = idempotency.request_hash(body)
    spec = TASKS.for_request(request)
    cost = spec.price(request)
    # Two identical requests racing past the idempotency lookup: the loser's insert hits the
    # unique constraint, its whole transaction rolls back, and the retry replays the winner's job.
    # A reservation refused while a settling job moved the limits (`_LimitsMoved`) is tried
    # again from the start, its partial charges rolled back with the transaction.
    integrity_tries = 2 if idempotency_key else 1
    for _ in range(integrity_tries + LIMITS_MOVED_RETRIES):
        try:
            with transaction(session_factory) as session:
                return _create_in_transaction(
                    session, key, request, spec, body, body_hash=body_hash, cost=cost,
                    idempotency_key=idempotency_key, input_image=input_image, surface=surface,
                    ttl_hours=idempotency_ttl_hours, on_created=on_created)
        except IntegrityError:
            integrity_tries -= 1
            if integrity_tries == 0:
                raise
        except _LimitsMoved:
            continue
    raise ServiceUnavailable("The account's limits kept changing while this job was being "
                             "reserved; nothing was charged. Try again.")


def _create_in_transaction(session: Session, key: ApiKey, request, spec: TaskSpec,
                           body: dict[str, Any], *,
                           body_hash: str, cost: int, idempotency_key: str | None,
                           input_image: str | None, surface: str, ttl_hours: float,
                           on_created=None) -> tuple[Generation, bool]:
    now = utcnow()
    if idempotency_key is not None:
        replay_id = idempotency.find_replay(session, key.id, idempotency_key, body_hash,
                                            ttl_hours=ttl_hours, now=now)
        if replay_id is not None:
            return session.get_one(Generation, replay_id), True

    if key.per_request_limit is not None and cost > key.per_request_limit:
        require_paid_plan(session.get_one(Account, key.account_id))  # that refusal comes first
        raise PerRequestLimitExceeded(
            f"This job costs {cost} credits; this API key allows at most "
            f"{key.per_request_limit} credits per request.",
            details={"cost": cost, "limit": key.per_request_limit})
    period = budget_period(now)
    balance = reserve(session, key, cost, spec.slots, period)

    generation = Generation(
        id=new_uuid(), account_id=key.account_id, api_key_id=key.id, surface=surface, tool=request.tool,
        mode=spec.job_mode(request), request=body, request_hash=body_hash,
        seed=_seed_of(request), status="pending", progress=0.0, cost_credits=cost,
        slots=spec.slots, budget_period=period, input_image=input_image, output_keys=[],
        attempts=0, created_at=now)
    # Core INSERTs of prebuilt statements on the transaction's connection (no unit of work);
    # the row is built with the same values the response is shaped from.
    rows = {column: getattr(generation, column) for column in _GENERATION_INSERT_COLUMNS}
    ledger = {"account_id": key.account_id, "generation_id": generation.id, "kind": "reserve",
              "amount": -cost, "balance_after": balance, "created_at": now,
              "memo": f"{request.tool} generation"}
    connection = session.connection()
    if connection.dialect.name == "postgresql":  # one round trip: both rows and the wake-up
        connection.execute(_INSERT_JOB_ROWS_NOTIFY, {
            **{f"job_{column}": value for column, value in rows.items()},
            **{f"ledger_{column}": value for column, value in ledger.items()},
            "payload": notify_payload(session, "created", generation.id)})
    else:
        connection.execute(_INSERT_GENERATION, rows)
        connection.execute(_INSERT_LEDGER, ledger)
    if idempotency_key is not None:
        idempotency.remember(session, key.id, idempotency_key, body_hash, generation.id, now=now)
    if on_created is not None:
        on_created(session, generation)
    note(session, "created", generation.id, notified=connection.dialect.name == "postgresql")
    return generation, False


_GENERATION_INSERT_COLUMNS = (
    "id", "account_id", "api_key_id", "surface", "tool", "mode", "request", "request_hash",
    "seed", "status", "progress", "cost_credits", "slots", "budget_period", "input_image",
    "output_keys", "attempts", "created_at")
_LEDGER_INSERT_COLUMNS = ("account_id", "generation_id", "kind", "amount", "balance_after",
                          "created_at", "memo")
_INSERT_GENERATION = Generation.__table__.insert()
_INSERT_LEDGER = LedgerEntry.__table__.insert()


def _insert_job_rows_and_notify():
    """PostgreSQL: the job row, its ledger entry and the `pg_notify` wake-up in one statement
    (two data-modifying CTEs beside a SELECT), built once; parameters `job_<column>`,
    `ledger_<column>` and `payload`."""
    def insert(table, columns, prefix: str, name: str):
        values = {column: bindparam(f"{prefix}{column}", type_=table.c[column].type)
                  for column in columns}
        return table.insert().values(values).cte(name)

    job = insert(Generation.__table__, _GENERATION_INSERT_COLUMNS, "job_", "new_job")
    ledger = insert(LedgerEntry.__table__, _LEDGER_INSERT_COLUMNS, "ledger_", "new_ledger_entry")
    return notify_statement().add_cte(job, ledger)


_INSERT_JOB_ROWS_NOTIFY = _insert_job_rows_and_notify()


def _seed_of(request) -> int:
    # A seed is fixed at creation so a retried job renders the same image.
    seed = request_seed(request)
    return seed if seed is not None else secrets.randbelow(2**32)


def reserve(session: Session, key: ApiKey, cost: int, slots: int, period: str) -> int:
    """Reserve `slots` generation slots, `cost` against the key's monthly (rolling the period) and
    total budgets, and `cost` credits: two conditional UPDATEs (the key's budgets, only while the
    key is active; then the account's paid plan, slots and balance, `RETURNING` the balance),
    prebuilt Core statements on the transaction's connection (on PostgreSQL one statement holding
    both). Returns the new balance. When either refuses, the first limit that refuses — key
    status, paid plan, slots, monthly budget, total budget, credits, in that order — is raised;
    the caller's transaction rolls back whatever was charged."""
    connection = session.connection()
    budget = {"r_key": key.id, "r_cost": cost, "r_period": period}
    account = {"r_account": key.account_id, "r_cost": cost, "r_slots": slots}
    if connection.dialect.name == "postgresql":  # both UPDATEs in one statement
        budgets_charged, balance = connection.execute(_RESERVE_BOTH, {**budget, **account}).one()
    else:
        budgets_charged, balance = connection.execute(_RESERVE_BUDGETS, budget).rowcount, None
        if budgets_charged:
            balance = connection.execute(_RESERVE_ACCOUNT, account).scalar()
    if balance is not None:
        return int(balance)
    _raise_refusal(session, key, cost, slots, period, budgets_charged=budgets_charged == 1)
    raise AssertionError("unreachable")


def _reserve_statements():
    """The two conditional UPDATEs of `reserve`, built (and so cache-keyed) once."""
    keys, accounts = ApiKey.__table__.c, Account.__table__.c
    cost = bindparam("r_cost", type_=keys.total_used.type)
    used_this_period = case((keys.monthly_period == bindparam("r_period"), keys.monthly_used),
                            else_=0)
    budgets = (update(ApiKey.__table__)
               .where(keys.id == bindparam("r_key"), keys.status == "active",
                      or_(keys.monthly_budget.is_(None),
                          used_this_period + cost <= keys.monthly_budget),
                      or_(keys.total_budget.is_(None), keys.total_used + cost <= keys.total_budget))
               .values(monthly_used=used_this_period + cost,
                       monthly_period=bindparam("r_period"), total_used=keys.total_used + cost))
    slot_limit = case(PLAN_SLOTS, value=accounts.plan, else_=0)
    account_cost = bindparam("r_cost", type_=accounts.credit_balance.type)
    slots = bindparam("r_slots", type_=accounts.active_slots.type)
    account = (update(Account.__table__)
               .where(accounts.id == bindparam("r_account"), accounts.plan.in_(PAID_PLANS),
                      accounts.active_slots + slots <= slot_limit,
                      accounts.credit_balance >= account_cost)
               .values(active_slots=accounts.active_slots + slots,
                       credit_balance=accounts.credit_balance - account_cost)
               .returning(accounts.credit_balance))
    return budgets, account


def _reserve_both(budgets, account):
    """PostgreSQL: `budgets` and `account` as data-modifying CTEs of one statement, the account
    charged only if the key was; selects (keys charged: 0 or 1, the new balance or NULL)."""
    charged_key = budgets.returning(ApiKey.__table__.c.id).cte("charged_key")
    charged_account = account.where(exists(select(charged_key.c.id))).cte("charged_account")
    return select(select(func.count()).select_from(charged_key).scalar_subquery(),
                  select(charged_account.c.credit_balance).scalar_subquery())


_RESERVE_BUDGETS, _RESERVE_ACCOUNT = _reserve_statements()
_RESERVE_BOTH = _reserve_both(_RESERVE_BUDGETS, _RESERVE_ACCOUNT)


def _raise_refusal(session: Session, key: ApiKey, cost: int, slots: int, period: str, *,
                   budgets_charged: bool) -> None:
    """Raise the first limit that refused a reservation (read in the same transaction)."""
    if not budgets_charged:
        from .keys import ensure_key_usable

        status = session.scalar(select(ApiKey.status).where(ApiKey.id == key.id))
        ensure_key_usable(session, ApiKey(status=status), touch=False)  # paused / revoked
    plan, active, balance = session.execute(
        select(Account.plan, Account.active_slots, Account.credit_balance)
        .where(Account.id == key.account_id)).one()
    account = Account(plan=plan)
    require_paid_plan(account)
    limit = plan_slot_limit(plan)
    if active + slots > limit:
        raise QueueLimitExceeded(
            f"Your {plan} plan allows {limit} active generation {_plural(limit, 'slot')} at "
            f"once. This request needs {slots} {_plural(slots, 'slot')}.",
            details={"active": active, "limit": limit, "plan": plan, "requiredSlots": slots})
    if not budgets_charged:
        _raise_budget_refusal(session, key.id, cost, period)
    if balance < cost:
        raise InsufficientCredits(
            f"The account has {balance} credits; this job costs {cost}. Add credits or use a "
            f"lower-cost quality/scale.", details={"balance": balance, "cost": cost})
    raise _LimitsMoved()


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _raise_budget_refusal(session: Session, key_id: str, cost: int, period: str) -> None:
    monthly, monthly_used, key_period, total, total_used = session.execute(
        select(ApiKey.monthly_budget, ApiKey.monthly_used, ApiKey.monthly_period,
               ApiKey.total_budget, ApiKey.total_used).where(ApiKey.id == key_id)).one()
    used = monthly_used if key_period == period else 0
    if monthly is not None and used + cost > monthly:
        raise MonthlyBudgetExceeded(
            f"This API key's monthly budget is {monthly} credits; {used} are used in {period} "
            f"and this job costs {cost}.",
            details={"budget": monthly, "used": used, "cost": cost, "period": period})
    if total is not None and total_used + cost > total:
        raise TotalBudgetExceeded(
            f"This API key's total budget is {total} credits; {total_used} are used and this "
            f"job costs {cost}.", details={"budget": total, "used": total_used, "cost": cost})
    raise _LimitsMoved()


class _LimitsMoved(Exception):
    """A reservation was refused, yet the limits read again in the same transaction refuse
    nothing: on PostgreSQL (READ COMMITTED, a fresh snapshot per statement) a job settling
    beside it freed slots or budget in between. `create_job` tries the whole create again."""


# ---- lifecycle ----------------------------------------------------------------------------------
def lease_next_job(session_factory: SessionFactory, worker_id: str, lease_seconds: float, *,
                   tools: Collection[str] | None = None) -> Generation | None:
    """Claim the oldest `pending` job (optionally only these tools) for `worker_id`.

    Sets `processing`, `attempts + 1` and a lease of `lease_seconds`. Postgres picks with
    `FOR UPDATE SKIP LOCKED`; SQLite's write transaction is exclusive, and the UPDATE is
    conditional on `status='pending'` either way. Returns None when nothing is pending.
    """
    with transaction(session_factory) as session:
        query = (select(Generation.id).where(Generation.status == "pending")
                 .order_by(Generation.created_at, Generation.id).limit(1))
        if tools is not None:
            query = query.where(Generation.tool.in_(list(tools)))
        if not is_sqlite(session.get_bind()):
            query = query.with_for_update(skip_locked=True)
        job_id = session.scalar(query)
        if job_id is None:
            return None
        now = utcnow()
        job = session.scalars(  # the claimed row comes back from the UPDATE itself
            update(Generation).where(Generation.id == job_id, Generation.status == "pending")
            .values(status="processing", attempts=Generation.attempts + 1, progress=0.0,
                    step=None, steps=None, lease_owner=worker_id, started_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(Generation)
            .execution_options(populate_existing=True, **_NO_SYNC)).first()
        if job is None:
            return None
        note(session, "changed", job_id)
        return job


def _update_leased(session, job_id: str, worker_id: str, **values) -> bool:
    """Set `values` on the job if it is `processing` under `worker_id`'s lease; False if not."""
    result = session.execute(
        update(Generation).where(Generation.id == job_id, Generation.status == "processing",
                                 Generation.lease_owner == worker_id)
        .values(**values).execution_options(**_NO_SYNC))
    return result.rowcount == 1


def heartbeat(session_factory: SessionFactory, job_id: str, worker_id: str, progress: float,
              lease_seconds: float, *, step: int | None = None,
              steps: int | None = None) -> bool:
    """Record progress (clamped to [0, 1]) and, when known, the denoising step reached of how
    many, and extend the lease; False if the lease was lost (the job was reclaimed, finished or
    cancelled), in which case the worker should stop."""
    now = utcnow()
    values = {} if step is None else {"step": int(step), "steps": steps}
    with transaction(session_factory) as session:
        alive = _update_leased(session, job_id, worker_id,
                               progress=min(max(float(progress), 0.0), 1.0),
                               lease_expires_at=now + timedelta(seconds=lease_seconds), **values)
        if alive:
            note(session, "progress", job_id)
        return alive


def complete_job(session_factory: SessionFactory, job_id: str, worker_id: str,
                 output_keys: list[str], model_revisions: dict[str, str] | None = None) -> bool:
    """Mark the job `completed` with its stored outputs (and the model revisions they were made
    with) and free its slots. False (and nothing changes) when `worker_id` no longer holds the
    job's lease."""
    now = utcnow()
    with transaction(session_factory) as session:
        # One UPDATE that also returns what settling needs (no reload of the whole row).
        settled = session.execute(
            update(Generation).where(Generation.id == job_id, Generation.status == "processing",
                                     Generation.lease_owner == worker_id)
            .values(status="completed", progress=1.0, output_keys=list(output_keys),
                    finished_at=now, lease_owner=None, lease_expires_at=None,
                    model_revisions=model_revisions)
            .returning(Generation.account_id, Generation.slots, Generation.surface)
            .execution_options(**_NO_SYNC)).first()
        if settled is None:
            return False
        session.execute(update(Account).where(Account.id == settled.account_id)
                        .values(active_slots=Account.active_slots - settled.slots)
                        .execution_options(**_NO_SYNC))
        if settled.surface == "aixpose":  # its pictures' and videos' webhook events
            enqueue_job_events(session, session.get_one(Generation, job_id,
                                                        populate_existing=True))
        note(session, "changed", job_id)
        return True


def fail_job(session_factory: SessionFactory, job_id: str, worker_id: str, error_code: str,
             message: str) -> bool:
    """Mark the job `failed`, refund its credits and key budgets (ledger `refund`) and free its
    slots. False (and nothing changes) when `worker_id` no longer holds the job's lease."""
    now = utcnow()
    with transaction(session_factory) as session:
        if not _update_leased(session, job_id, worker_id, status="failed",
                              error_code=error_code, error=message, finished_at=now,
                              lease_owner=None, lease_expires_at=None):
            return False
        job = session.get_one(Generation, job_id, populate_existing=True)
        _refund_and_release(session, job, now=now)
        enqueue_job_events(session, job)  # in the settling transaction
        note(session, "changed", job_id)
        return True


def requeue_job(session_factory: SessionFactory, job_id: str, worker_id: str) -> bool:
    """Put a job its worker stops on purpose (the server drains) back to `pending`: lease
    cleared, progress reset, the attempt not counted; its credits and slots stay reserved.
    False (and nothing changes) when `worker_id` no longer holds the job's lease."""
    with transaction(session_factory) as session:
        if not _update_leased(session, job_id, worker_id, status="pending", lease_owner=None,
                              lease_expires_at=None, progress=0.0, step=None, steps=None,
                              attempts=Generation.attempts - 1):
            return False
        note(session, "created", job_id)  # pending again: a worker may take it
        note(session, "changed", job_id)
        return True


def cancel_job(session_factory: SessionFactory, account_id: str, job_id: str, *,
               field: str = "id", subject: str | None = None) -> Generation:
    """Cancel the account's pending or processing job on its owner's request.

    One transaction: the job becomes `failed` with `error_code` `canceled` (a pending job never
    starts; a running one loses its lease, so its worker stops at the next denoising step and
    cannot settle it again), its slots are freed, its credits and key budgets refunded in full
    (ledger `refund`) and its terminal events enqueued. `NotFound` (naming `field`) for another
    account's or an unknown job; `JobNotCancellable` (409) when it has already finished, and
    then nothing changes. `subject` names the job in messages (default: the generation).
    """
    subject = subject or f"generation {job_id!r}"
    for _ in range(3):  # a job that moves on (leased, finished) meanwhile is looked at again
        now = utcnow()
        with transaction(session_factory) as session:
            job = get_generation(session, account_id, job_id, field=field)
            status = job.status
            if job.is_terminal:
                raise JobNotCancellable(field, f"{subject} is already {status}; only pending "
                                               "or processing jobs can be cancelled",
                                        status=status)
            result = session.execute(
                update(Generation).where(Generation.id == job_id, Generation.status == status)
                .values(status="failed", error_code=CANCELED_ERROR,
                        error="The job was cancelled by its owner.", finished_at=now,
                        lease_owner=None, lease_expires_at=None)
                .execution_options(**_NO_SYNC))
            if result.rowcount != 1:
                continue
            job = session.get_one(Generation, job_id, populate_existing=True)
            _refund_and_release(session, job, now=now)
            enqueue_job_events(session, job)  # in the settling transaction
            note(session, "cancelled", job_id)
            note(session, "changed", job_id)
            return job
    raise AssertionError(f"job {job_id} kept changing while being cancelled")


def expire_leases(session_factory: SessionFactory, max_attempts: int) -> int:
    """Handle `processing` jobs whose lease ran out: back to `pending` while `attempts <
    max_attempts`, else `failed` (`service_unavailable`) with a refund. Returns how many moved."""
    now = utcnow()
    moved = 0
    with transaction(session_factory) as session:
        query = (select(Generation).where(Generation.status == "processing",
                                          Generation.lease_expires_at < now)
                 .order_by(Generation.created_at, Generation.id))
        if not is_sqlite(session.get_bind()):
            query = query.with_for_update(skip_locked=True)
        expired = session.scalars(query.execution_options(populate_existing=True)).all()
        # Settle in account order so two concurrent sweeps lock accounts in the same order.
        for job in sorted(expired, key=lambda job: job.account_id):
            still_expired = and_(Generation.id == job.id, Generation.status == "processing",
                                 Generation.lease_owner == job.lease_owner,
                                 Generation.lease_expires_at < now)
            if job.attempts < max_attempts:
                result = session.execute(
                    update(Generation).where(still_expired)
                    .values(status="pending", lease_owner=None, lease_expires_at=None,
                            progress=0.0, step=None, steps=None).execution_options(**_NO_SYNC))
                moved += result.rowcount
                if result.rowcount == 1:
                    note(session, "created", job.id)  # pending again: a worker may take it
                    note(session, "changed", job.id)
                continue
            result = session.execute(
                update(Generation).where(still_expired)
                .values(status="failed", error_code=LEASE_LOST_ERROR, finished_at=now,
                        error=f"The job's worker stopped responding ({job.attempts} attempts).",
                        lease_owner=None, lease_expires_at=None)
                .execution_options(**_NO_SYNC))
            if result.rowcount == 1:
                session.refresh(job)
                _refund_and_release(session, job, now=now)
                enqueue_job_events(session, job)  # in the settling transaction
                note(session, "changed", job.id)
                moved += 1
    return moved


def _release_slots(session: Session, job: Generation) -> None:
    session.execute(update(Account).where(Account.id == job.account_id)
                    .values(active_slots=Account.active_slots - job.slots)
                    .execution_options(**_NO_SYNC))


def _refund_and_release(session: Session, job: Generation, *, now: datetime) -> None:
    balance = session.execute(
        update(Account).where(Account.id == job.account_id)
        .values(credit_balance=Account.credit_balance + job.cost_credits,
                active_slots=Account.active_slots - job.slots)
        .returning(Account.credit_balance).execution_options(**_NO_SYNC)).scalar_one()
    if job.api_key_id is not None:
        # The monthly budget is only given back if the key is still in the month that paid.
        session.execute(
            update(ApiKey).where(ApiKey.id == job.api_key_id)
            .values(total_used=ApiKey.total_used - job.cost_credits,
                    monthly_used=case((ApiKey.monthly_period == job.budget_period,
                                       ApiKey.monthly_used - job.cost_credits),
                                      else_=ApiKey.monthly_used))
            .execution_options(**_NO_SYNC))
    session.add(LedgerEntry(account_id=job.account_id, generation_id=job.id, kind="refund",
                            amount=job.cost_credits, balance_after=int(balance), created_at=now,
                            memo=f"refund: {job.error_code or 'failed'}"))
    session.flush()


# ---- reads --------------------------------------------------------------------------------------
def get_generation(session: Session, account_id: str, generation_id: str, *,
                   field: str = "id") -> Generation:
    """The account's generation, or `NotFound` naming `field` (e.g. `input.main_image`)."""
    job = session.get(Generation, generation_id) if isinstance(generation_id, str) else None
    if job is None or job.account_id != account_id:
        raise NotFound(field, f"generation {generation_id!r} was not found")
    return job


def list_generations(session: Session, account_id: str, *, surface: str | None = "wixma",
                     status: str | None = None, tool: str | None = None, limit: int = 20,
                     cursor: str | None = None) -> tuple[list[Generation], str | None]:
    """The account's generations, newest first; returns `(items, next_cursor)` (the keyset
    cursor of `pagination`; `next_cursor` is None on the last page)."""
    check_limit(limit)
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(JOB_STATUSES)}")
    tools = TASKS.tools(surface)
    if tool is not None and tool not in tools:
        raise InvalidInput("tool", f"must be one of {', '.join(tools)}")
    query = select(Generation).where(Generation.account_id == account_id)
    if surface is not None:
        query = query.where(Generation.surface == surface)
    if status is not None:
        query = query.where(Generation.status == status)
    if tool is not None:
        query = query.where(Generation.tool == tool)
    return newest_first_page(session, query, Generation, limit, cursor)
