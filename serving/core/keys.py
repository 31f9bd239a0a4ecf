"""API keys: creation, authentication, scopes, allowed tools and status.

A secret is shown once (`wx_live_...` for Wixma, `aix_live_...` for AIXpose) and only its SHA-256
is stored. A fast unsalted hash is right here: the secrets are 256 bits from `secrets`, so there is
nothing to brute-force or look up in a rainbow table, and a fast hash lets every request find its
key by an indexed equality lookup. Slow salted hashes (argon2, bcrypt) exist for low-entropy
passwords, not for random tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from retouch.serving.core.errors import (Forbidden, InvalidInput, NotFound, ToolNotAllowed,
                                      Unauthorized)

from .accounts import get_account
from .db import utcnow
from .tables import KEY_STATUSES, SURFACES, ApiKey
from ..tasks import TASKS

SECRET_PREFIXES: dict[str, str] = {"wixma": "wx_live_", "aixpose": "aix_live_"}
WIXMA_SCOPES = ("generations:create", "generations:read", "uploads:create", "credits:read")
SURFACE_SCOPES: dict[str, tuple[str, ...]] = {"wixma": WIXMA_SCOPES, "aixpose": WIXMA_SCOPES}
SHOWN_PREFIX_CHARS = 4  # characters of the random part kept in `prefix` for people to recognise
LAST_USED_RESOLUTION = timedelta(minutes=1)  # `last_used_at` is written at most once a minute


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a secret (see the module docstring for why a fast hash is right)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def hash_matches(stored: str | None, computed: str) -> bool:
    """Whether a row found by its hash carries exactly `computed`, compared in constant time.

    The lookup (an index, a dict) finds the row; this check makes the accept decision itself
    independent of where two hashes differ, and exact whatever the database's collation."""
    return stored is not None and secrets.compare_digest(stored, computed)


def _clean_list(values: Iterable[str] | None, allowed: Iterable[str], field: str) -> list[str] | None:
    if values is None:
        return None
    allowed = tuple(allowed)
    cleaned: list[str] = []
    for value in values:
        if value not in allowed:
            raise InvalidInput(field, f"{value!r} is not one of {', '.join(allowed)}")
        if value not in cleaned:
            cleaned.append(value)
    return cleaned


def _non_negative(value: int | None, field: str) -> int | None:
    if value is not None and value < 0:
        raise InvalidInput(field, "must be zero or more")
    return value


def create_key(session: Session, account_id: str, *, surface: str = "wixma",
               name: str | None = None, scopes: Iterable[str] | None = None,
               tools: Iterable[str] | None = None, monthly_budget: int | None = None,
               total_budget: int | None = None, per_request_limit: int | None = None,
               rate_limit_per_minute: int | None = None,
               expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns `(key, secret)`. The secret is not stored and cannot be shown again.

    `scopes=None` grants every scope of the surface; `tools=None` allows every tool.
    """
    if surface not in SURFACES:
        raise InvalidInput("surface", f"must be one of {', '.join(SURFACES)}")
    get_account(session, account_id)
    scope_list = _clean_list(scopes, SURFACE_SCOPES[surface], "scopes")
    if scope_list is None:
        scope_list = list(SURFACE_SCOPES[surface])
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidInput("expires_at", "must include a timezone (e.g. 2027-01-01T00:00:00Z)")
    if rate_limit_per_minute is not None and rate_limit_per_minute < 1:
        raise InvalidInput("rate_limit_per_minute", "must be at least 1")
    secret = SECRET_PREFIXES[surface] + secrets.token_urlsafe(32)
    key = ApiKey(
        account_id=account_id, surface=surface, name=name,
        prefix=secret[:len(SECRET_PREFIXES[surface]) + SHOWN_PREFIX_CHARS],
        secret_hash=hash_secret(secret), scopes=scope_list,
        allowed_tools=_clean_list(tools, TASKS.tools("wixma"), "tools"),
        monthly_budget=_non_negative(monthly_budget, "monthly_budget"),
        total_budget=_non_negative(total_budget, "total_budget"),
        per_request_limit=_non_negative(per_request_limit, "per_request_limit"),
        monthly_used=0, total_used=0, rate_limit_per_minute=rate_limit_per_minute,
        status="active", expires_at=expires_at)
    session.add(key)
    session.flush()
    return key, secret


def authenticate(session: Session, secret: str | None, surface: str = "wixma", *,
                 touch: bool = True) -> ApiKey:
    """The active key for a bearer secret.

    Raises `Unauthorized` for a missing, malformed or unknown secret (or one of another surface)
    and `Forbidden` for a paused, revoked or expired key. With `touch`, updates `last_used_at`
    (at most once a minute) in the caller's session; the caller commits. Without, it only reads
    (`touch_due` says when a touch is owed).
    """
    prefix = SECRET_PREFIXES.get(surface, "")
    if not secret or not prefix or not secret.startswith(prefix) or len(secret) > 200:
        raise Unauthorized("Missing or invalid Bearer key. Send `Authorization: Bearer "
                           f"{prefix or 'wx_live_'}...`.")
    secret_hash = hash_secret(secret)
    key = session.scalars(select(ApiKey).where(ApiKey.secret_hash == secret_hash)).first()
    if key is None or not hash_matches(key.secret_hash, secret_hash) or key.surface != surface:
        raise Unauthorized("Invalid API key.")
    return ensure_key_usable(session, key, touch=touch)


class VerifiedKeys:
    """A short cache of keys that passed authentication (and whose account has a paid plan), by
    secret hash, so a busy key is not read from the database on every request.

    An entry lives `ttl` seconds. Any change to a key or an account made through an ORM session
    in this process (pause, resume, revoke, plan change, budgets, scopes) clears the cache at
    once (`_invalidate_on_change`); another process's change is seen within `ttl`. Money never
    depends on it: the reservation's conditional UPDATE charges only an `active` key of a paid
    plan. `get` hands out a fresh detached copy, so requests never share an ORM object."""

    _COLUMNS = tuple(column.key for column in ApiKey.__table__.columns)

    def __init__(self, ttl: float = 2.0, max_entries: int = 10_000):
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, secret_hash: str) -> ApiKey | None:
        entry = self._entries.get(secret_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return ApiKey(**entry[1])

    def put(self, secret_hash: str, key: ApiKey) -> None:
        values = {name: getattr(key, name) for name in self._COLUMNS}
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[secret_hash] = (time.monotonic() + self.ttl, values)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


VERIFIED_KEYS = VerifiedKeys()


def _invalidate_on_change() -> None:
    from sqlalchemy import event

    from .tables import Account

    watched = (ApiKey, Account)

    @event.listens_for(Session, "after_flush")
    def _after_flush(session, _context) -> None:
        if any(isinstance(obj, watched) for obj in (*session.dirty, *session.deleted)):
            VERIFIED_KEYS.clear()

    @event.listens_for(Session, "do_orm_execute")
    def _on_execute(state) -> None:
        if (state.is_update or state.is_delete) and state.bind_mapper is not None \
                and state.bind_mapper.class_ in watched:
            VERIFIED_KEYS.clear()


_invalidate_on_change()


def authenticate_cached(session_factory, secret: str | None, surface: str = "wixma") -> ApiKey:
    """`authenticate` (read only) plus the account's paid plan, through `VERIFIED_KEYS`: a key
    verified less than `ttl` seconds ago is checked again only for expiry, without a read."""
    from .accounts import require_paid_plan
    from .tables import Account

    key = cached_key(secret, surface)
    if key is not None:
        return key
    with session_factory() as session:
        key = authenticate(session, secret, surface, touch=False)
        require_paid_plan(session.get(Account, key.account_id))
    VERIFIED_KEYS.put(hash_secret(secret), key)
    return key


def cached_key(secret: str | None, surface: str = "wixma") -> ApiKey | None:
    """The key for `secret` from `VERIFIED_KEYS` (expiry checked), or None when not cached; no
    database read."""
    prefix = SECRET_PREFIXES.get(surface, "")
    if not secret or not prefix or not secret.startswith(prefix) or len(secret) > 200:
        return None
    secret_hash = hash_secret(secret)
    key = VERIFIED_KEYS.get(secret_hash)
    if key is None or not hash_matches(key.secret_hash, secret_hash) or key.surface != surface:
        return None
    return ensure_key_usable(None, key, touch=False)


def touch_due(key: ApiKey) -> bool:
    """Whether `last_used_at` is older than its resolution (a minute)."""
    return key.last_used_at is None or utcnow() - key.last_used_at >= LAST_USED_RESOLUTION


def ensure_key_usable(session: Session, key: ApiKey, *, touch: bool = True) -> ApiKey:
    """`Forbidden` for a paused, revoked or expired key; else touches `last_used_at` (at most once
    a minute, in the caller's session) and returns the key. Shared by bearer keys and MCP grants."""
    now = utcnow()
    if key.status == "revoked":
        raise Forbidden("This API key has been revoked. Create a new key.",
                        details={"reason": "revoked"})
    if key.status == "paused":
        raise Forbidden("This API key is paused. Enable it in Settings.",
                        details={"reason": "paused"})
    if key.expires_at is not None and key.expires_at <= now:
        raise Forbidden("This API key has expired. Create a new key.",
                        details={"reason": "expired"})
    if touch and touch_due(key):
        # A Core UPDATE: a touch changes nothing `VERIFIED_KEYS` holds but the time.
        session.connection().execute(update(ApiKey.__table__)
                                     .where(ApiKey.__table__.c.id == key.id)
                                     .values(last_used_at=now))
        key.last_used_at = now
    return key


def require_scope(key: ApiKey, scope: str) -> None:
    """Raise `Forbidden` naming the scope when the key lacks it."""
    if scope not in (key.scopes or []):
        raise Forbidden(f"This API key is missing the required scope `{scope}`.",
                        details={"required_scope": scope})


def require_tool(key: ApiKey, tool: str) -> None:
    """Raise `ToolNotAllowed` when the key is limited to other tools."""
    if key.allowed_tools is not None and tool not in key.allowed_tools:
        raise ToolNotAllowed(f"This API key is not allowed to use the {tool} tool.",
                             details={"tool": tool, "allowed_tools": list(key.allowed_tools)})


def get_key(session: Session, key_id: str, *, account_id: str | None = None) -> ApiKey:
    """The key with this id (optionally only within one account), or `NotFound`."""
    key = session.get(ApiKey, key_id)
    if key is None or (account_id is not None and key.account_id != account_id):
        raise NotFound("key_id", f"API key {key_id!r} does not exist")
    return key


def list_keys(session: Session, account_id: str) -> list[ApiKey]:
    """An account's keys, newest first."""
    return list(session.scalars(select(ApiKey).where(ApiKey.account_id == account_id)
                                .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())))


def set_key_status(session: Session, key_id: str, status: str) -> ApiKey:
    """Pause, resume (`active`) or revoke a key. Revocation is final."""
    if status not in KEY_STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(KEY_STATUSES)}")
    key = get_key(session, key_id)
    if key.status == "revoked" and status != "revoked":
        raise InvalidInput("status", "a revoked key cannot be re-enabled; create a new key")
    key.status = status
    session.flush()
    return key
