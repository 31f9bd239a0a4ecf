"""Idempotency-Key records: same key + same body replays the job, a different body conflicts.

Records are scoped per API key and kept `ttl_hours`; an older record no longer counts and is
replaced. `jobs.create_generation` uses these inside its one creation transaction.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from retouch.pipelines.errors import IdempotencyConflict, InvalidInput

from .tables import IdempotencyRecord

MAX_KEY_LENGTH = 255


def request_hash(body: Any) -> str:
    """SHA-256 of the body's canonical JSON (sorted keys, no whitespace): key order never matters."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_idempotency_key(idempotency_key: str) -> str:
    """Validate an `Idempotency-Key` header value (1-255 printable characters)."""
    value = idempotency_key.strip()
    if not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise InvalidInput("Idempotency-Key",
                           f"must be 1-{MAX_KEY_LENGTH} printable characters")
    return value


def find_replay(session: Session, api_key_id: str, idempotency_key: str, body_hash: str,
                *, ttl_hours: float, now: datetime) -> str | None:
    """The generation id to replay for this key, or None when the key is new (or stale).

    Raises `IdempotencyConflict` when the key was used with a different body. A stale record is
    deleted so the caller can insert a fresh one.
    """
    record = session.scalars(select(IdempotencyRecord).where(
        IdempotencyRecord.api_key_id == api_key_id,
        IdempotencyRecord.idempotency_key == idempotency_key)).first()
    if record is None:
        return None
    if record.created_at <= now - timedelta(hours=ttl_hours):
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))
        return None
    if record.request_hash != body_hash:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body. Use a new "
            "key for a different request.",
            details={"idempotency_key": idempotency_key, "generation_id": record.generation_id})
    return record.generation_id


def remember(session: Session, api_key_id: str, idempotency_key: str, body_hash: str,
             generation_id: str, *, now: datetime) -> None:
    """Insert the record; a concurrent twin makes the flush raise `IntegrityError`."""
    session.add(IdempotencyRecord(api_key_id=api_key_id, idempotency_key=idempotency_key,
                                  request_hash=body_hash, generation_id=generation_id,
                                  created_at=now))
    session.flush()


def purge_expired(session: Session, *, ttl_hours: float, now: datetime) -> int:
    """Delete records older than the TTL; returns how many went."""
    result = session.execute(delete(IdempotencyRecord).where(
        IdempotencyRecord.created_at <= now - timedelta(hours=ttl_hours)))
    return result.rowcount or 0
