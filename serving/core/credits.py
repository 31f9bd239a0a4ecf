"""Credit reads: `GET /api/v1/credits` (balance, queue capacity, the calling key's budgets) and the
account's ledger for reconciliation (`GET /v1/credits/ledger`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from retouch.serving.core.errors import InvalidInput

from .accounts import get_account, plan_slot_limit
from .db import utcnow
from .jobs import budget_period
from .pagination import check_limit
from .tables import ApiKey, LedgerEntry

MAX_LEDGER_PAGE = 200


def credit_summary(session: Session, key: ApiKey) -> dict[str, Any]:
    """Balance, queue capacity (active slots, limit, plan) and this key's budget usage.

    Read fresh from the database; the monthly figure is 0 once a new month has begun.
    """
    account = get_account(session, key.account_id)
    session.refresh(account)
    fresh_key = session.get_one(ApiKey, key.id, populate_existing=True)
    period = budget_period(utcnow())
    monthly_used = fresh_key.monthly_used if fresh_key.monthly_period == period else 0
    return {
        "balance": account.credit_balance,
        "queue": {"active": account.active_slots, "limit": plan_slot_limit(account.plan),
                  "plan": account.plan},
        "key": {
            "id": fresh_key.id,
            "monthly": {"used": monthly_used, "limit": fresh_key.monthly_budget,
                        "period": period},
            "total": {"used": fresh_key.total_used, "limit": fresh_key.total_budget},
            "per_request_limit": fresh_key.per_request_limit,
        },
    }


def list_ledger(session: Session, account_id: str, *, limit: int = 50,
                cursor: str | None = None) -> tuple[list[LedgerEntry], str | None]:
    """The account's ledger entries, newest first; returns `(entries, next_cursor)`.

    Entry ids only grow, so the cursor is the last id seen; None on the last page.
    """
    check_limit(limit, MAX_LEDGER_PAGE)
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if cursor is not None:
        if not cursor.isdigit():
            raise InvalidInput("cursor", "is not a cursor returned by this API")
        query = query.where(LedgerEntry.id < int(cursor))
    entries = list(session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit + 1)))
    if len(entries) <= limit:
        return entries, None
    return entries[:limit], str(entries[limit - 1].id)
