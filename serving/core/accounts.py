"""Accounts and plans: how many generation slots each plan allows, top-ups to the credit ledger."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from retouch.serving.core.errors import InvalidInput, NotFound, SubscriptionRequired

from .tables import PLANS, Account, LedgerEntry

# The seed's concurrency table: pending + processing jobs hold slots (carousel holds 2).
PLAN_SLOTS: dict[str, int] = {"free": 1, "standard": 2, "plus": 4, "pro": 6}
PAID_PLANS = ("standard", "plus", "pro")


def plan_slot_limit(plan: str) -> int:
    """Active generation slots the plan allows at once."""
    return PLAN_SLOTS[plan]


def require_paid_plan(account: Account) -> None:
    """API use needs a paid plan; raises `SubscriptionRequired` for free accounts."""
    if account.plan not in PAID_PLANS:
        raise SubscriptionRequired(
            f"API access requires an active paid subscription; this account is on the "
            f"{account.plan} plan. Activate Standard, Plus, or Pro.",
            details={"plan": account.plan})


def _check_plan(plan: str) -> str:
    if plan not in PLANS:
        raise InvalidInput("plan", f"must be one of {', '.join(PLANS)}")
    return plan


def create_account(session: Session, name: str, plan: str = "free", credits: int = 0) -> Account:
    """Create an account; an opening balance is written to the ledger as a `topup`."""
    if credits < 0:
        raise InvalidInput("credits", "must be zero or more")
    account = Account(name=name, plan=_check_plan(plan), credit_balance=0, active_slots=0)
    session.add(account)
    session.flush()
    if credits:
        credit_account(session, account.id, credits, "opening balance")
        session.refresh(account)
    return account


def get_account(session: Session, account_id: str) -> Account:
    """The account with this id, or `NotFound` naming `account_id`."""
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("account_id", f"account {account_id!r} does not exist")
    return account


def set_plan(session: Session, account_id: str, plan: str) -> Account:
    """Change an account's plan (slots already held stay held until their jobs finish)."""
    account = get_account(session, account_id)
    account.plan = _check_plan(plan)
    session.flush()
    return account


def credit_account(session: Session, account_id: str, amount: int, memo: str | None = None,
                   *, kind: str = "topup") -> int:
    """Add credits (one atomic UPDATE) and append a ledger entry; returns the new balance.

    `kind="adjust"` allows a negative correction that may not take the balance below zero.
    """
    if kind not in ("topup", "adjust"):
        raise InvalidInput("kind", "must be topup or adjust")
    if kind == "topup" and amount <= 0:
        raise InvalidInput("amount", "must be a positive number of credits")
    get_account(session, account_id)
    result = session.execute(
        update(Account).where(Account.id == account_id,
                              Account.credit_balance + amount >= 0)
        .values(credit_balance=Account.credit_balance + amount)
        .returning(Account.credit_balance)).first()
    if result is None:
        raise InvalidInput("amount", "would take the balance below zero")
    balance = int(result[0])
    session.add(LedgerEntry(account_id=account_id, kind=kind, amount=amount,
                            balance_after=balance, memo=memo))
    session.flush()
    return balance
