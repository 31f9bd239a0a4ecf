"""Operator commands: `retouch accounts ...` and `retouch keys ...`.

They open the database from `Settings().resolved_database_url` (`--home` or `RETOUCH_HOME`,
or `RETOUCH_DATABASE_URL`), bring its schema up to date, and print either readable lines or,
with `--json`, one JSON object. Heavy imports happen inside the commands so `retouch --help`
stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

accounts_app = typer.Typer(help="Create accounts and add credits.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, pause, resume and revoke API keys.", no_args_is_help=True)
members_app = typer.Typer(help="Dashboard members: create them and reset passwords.",
                          no_args_is_help=True)

HomeOption = typer.Option(None, "--home", help="data folder holding the database (RETOUCH_HOME)")
JsonOption = typer.Option(False, "--json", help="print one JSON object")


@contextmanager
def _write_session(home: Path | None) -> Iterator[Any]:
    from retouch.serving.core.db import (make_engine, make_session_factory, run_migrations,
                                         transaction)
    from retouch.serving.settings import Settings

    settings = Settings(home=home) if home is not None else Settings()
    url = settings.resolved_database_url
    run_migrations(url)
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _run(as_json: bool, action: Callable[[], dict[str, Any]], describe: Callable[[dict], str]):
    """Run an action; print its result, or the error (exit status 1)."""
    from retouch.serving.core.errors import RetouchError

    try:
        result = action()
    except RetouchError as exc:
        if as_json:
            typer.echo(json.dumps({"object": "error", "error": exc.to_dict()}))
        else:
            typer.echo(f"error ({exc.code}): {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result) if as_json else describe(result))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def account_dict(account) -> dict[str, Any]:
    """An account as plain JSON-ready data."""
    from retouch.serving.core.accounts import plan_slot_limit

    return {"id": account.id, "name": account.name, "plan": account.plan,
            "credit_balance": account.credit_balance, "active_slots": account.active_slots,
            "slot_limit": plan_slot_limit(account.plan), "created_at": _iso(account.created_at)}


def key_dict(key) -> dict[str, Any]:
    """An API key's settings as plain JSON-ready data (never the secret)."""
    return {"id": key.id, "account_id": key.account_id, "surface": key.surface,
            "name": key.name, "prefix": key.prefix, "status": key.status,
            "scopes": list(key.scopes), "allowed_tools": key.allowed_tools,
            "monthly_budget": key.monthly_budget, "total_budget": key.total_budget,
            "per_request_limit": key.per_request_limit,
            "rate_limit_per_minute": key.rate_limit_per_minute,
            "monthly_used": key.monthly_used, "monthly_period": key.monthly_period,
            "total_used": key.total_used, "expires_at": _iso(key.expires_at),
            "created_at": _iso(key.created_at), "last_used_at": _iso(key.last_used_at)}


def _describe_account(data: dict) -> str:
    return (f"{data['id']}  {data['name']}  plan={data['plan']}  "
            f"credits={data['credit_balance']}  slots={data['active_slots']}/{data['slot_limit']}")


def _describe_key(data: dict) -> str:
    return f"{data['id']}  {data['prefix']}...  {data['surface']}  {data['status']}"


# ---- accounts -----------------------------------------------------------------------------------
@accounts_app.command("create")
def create_account_command(
    name: str = typer.Option(..., "--name", help="account name"),
    plan: str = typer.Option("standard", "--plan", help="free | standard | plus | pro"),
    credits: int = typer.Option(0, "--credits", help="opening credit balance"),
    home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Create an account."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.accounts import create_account

        with _write_session(home) as session:
            return account_dict(create_account(session, name, plan, credits))

    _run(as_json, action, _describe_account)


@accounts_app.command("credit")
def credit_account_command(
    account_id: str = typer.Argument(..., help="account id (acct_...)"),
    amount: int = typer.Argument(..., help="credits to add"),
    memo: str = typer.Option("operator top-up", "--memo", help="ledger memo"),
    home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Add credits to an account (written to the ledger as a top-up)."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.accounts import credit_account, get_account

        with _write_session(home) as session:
            credit_account(session, account_id, amount, memo)
            account = get_account(session, account_id)
            session.refresh(account)
            return account_dict(account)

    _run(as_json, action, _describe_account)


@accounts_app.command("plan")
def set_plan_command(
    account_id: str = typer.Argument(..., help="account id (acct_...)"),
    plan: str = typer.Argument(..., help="free | standard | plus | pro"),
    home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Change an account's plan."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.accounts import set_plan

        with _write_session(home) as session:
            return account_dict(set_plan(session, account_id, plan))

    _run(as_json, action, _describe_account)


@accounts_app.command("show")
def show_account_command(
    account_id: str = typer.Argument(..., help="account id (acct_...)"),
    home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Show an account's plan, balance and slots."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.accounts import get_account

        with _write_session(home) as session:
            return account_dict(get_account(session, account_id))

    _run(as_json, action, _describe_account)


# ---- keys ---------------------------------------------------------------------------------------
def _parse_expiry(value: str | None) -> datetime | None:
    from retouch.serving.core.errors import InvalidInput

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("expires_at", "must be an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@keys_app.command("create")
def create_key_command(
    account: str = typer.Option(..., "--account", help="account id (acct_...)"),
    surface: str = typer.Option("wixma", "--surface", help="wixma | aixpose"),
    name: str = typer.Option(None, "--name", help="a label for people"),
    scope: list[str] = typer.Option(None, "--scope", help="grant a scope (repeat); default all"),
    tool: list[str] = typer.Option(None, "--tool", help="allow a tool (repeat); default all"),
    monthly_budget: int = typer.Option(None, "--monthly-budget", help="credits per month"),
    total_budget: int = typer.Option(None, "--total-budget", help="credits over the key's life"),
    per_request_limit: int = typer.Option(None, "--per-request-limit",
                                          help="most credits one job may cost"),
    rate_limit: int = typer.Option(None, "--rate-limit", help="requests per minute"),
    expires_at: str = typer.Option(None, "--expires-at", help="ISO 8601; UTC if no zone"),
    home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Create an API key and print its secret (shown only this once)."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.keys import create_key

        expiry = _parse_expiry(expires_at)
        with _write_session(home) as session:
            key, secret = create_key(
                session, account, surface=surface, name=name, scopes=scope or None,
                tools=tool or None, monthly_budget=monthly_budget, total_budget=total_budget,
                per_request_limit=per_request_limit, rate_limit_per_minute=rate_limit,
                expires_at=expiry)
            return {**key_dict(key), "secret": secret}

    _run(as_json, action, lambda data: (
        f"{_describe_key(data)}\nsecret: {data['secret']}\n"
        "Store the secret now; it cannot be shown again."))


def _status_command(key_id: str, status: str, home: Path | None, as_json: bool) -> None:
    def action() -> dict[str, Any]:
        from retouch.serving.core.keys import set_key_status

        with _write_session(home) as session:
            return key_dict(set_key_status(session, key_id, status))

    _run(as_json, action, _describe_key)


@keys_app.command("pause")
def pause_key_command(key_id: str = typer.Argument(..., help="key id (key_...)"),
                      home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Pause a key: its requests get `forbidden` until it is resumed."""
    _status_command(key_id, "paused", home, as_json)


@keys_app.command("resume")
def resume_key_command(key_id: str = typer.Argument(..., help="key id (key_...)"),
                       home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Resume a paused key."""
    _status_command(key_id, "active", home, as_json)


@keys_app.command("revoke")
def revoke_key_command(key_id: str = typer.Argument(..., help="key id (key_...)"),
                       home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """Revoke a key for good."""
    _status_command(key_id, "revoked", home, as_json)


@keys_app.command("list")
def list_keys_command(account: str = typer.Option(..., "--account", help="account id"),
                      home: Path = HomeOption, as_json: bool = JsonOption) -> None:
    """List an account's keys (never their secrets)."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.accounts import get_account
        from retouch.serving.core.keys import list_keys

        with _write_session(home) as session:
            get_account(session, account)
            return {"keys": [key_dict(key) for key in list_keys(session, account)]}

    _run(as_json, action, lambda data: "\n".join(_describe_key(k) for k in data["keys"]))


# ---- members ------------------------------------------------------------------------------------
PasswordOption = typer.Option(..., "--password", prompt=True, hide_input=True,
                              confirmation_prompt=True,
                              help="at least 8 characters (asked for when left out)")


def member_dict(member) -> dict[str, Any]:
    """A dashboard member as plain JSON-ready data (never the password hash)."""
    return {"id": member.id, "account_id": member.account_id, "email": member.email,
            "status": member.status, "created_at": _iso(member.created_at)}


def _describe_member(data: dict) -> str:
    return f"{data['id']}  {data['email']}  account={data['account_id']}  {data['status']}"


@members_app.command("create")
def create_member_command(
    account: str = typer.Option(..., "--account", help="account id (acct_...)"),
    email: str = typer.Option(..., "--email", help="the sign-in e-mail address"),
    password: str = PasswordOption, home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Add a member who can sign in to the account's dashboard."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.members import create_member

        with _write_session(home) as session:
            return member_dict(create_member(session, account, email, password))

    _run(as_json, action, _describe_member)


@members_app.command("set-password")
def set_member_password_command(
    email: str = typer.Option(..., "--email", help="the member's e-mail address"),
    password: str = PasswordOption, home: Path = HomeOption, as_json: bool = JsonOption,
) -> None:
    """Reset a member's password (their open sessions end)."""
    def action() -> dict[str, Any]:
        from retouch.serving.core.members import set_password

        with _write_session(home) as session:
            return member_dict(set_password(session, email, password))

    _run(as_json, action, _describe_member)
