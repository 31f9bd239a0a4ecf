"""What `GET /api/v1/credits` reports: balance, queue capacity and the calling key's budgets."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from .accounts import get_account, plan_slot_limit
from .db import utcnow
from .jobs import budget_period
from .tables import ApiKey


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
