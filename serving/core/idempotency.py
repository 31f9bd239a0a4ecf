"""Idempotency-Key records: same key + same body replays the job, a different body conflicts.

Records are scoped per API key and kept `ttl_hours`; an older record no longer counts and is
replaced. `jobs.create_job` uses these inside its one creation transaction.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from retouch.serving.core.errors import IdempotencyConflict, InvalidInput

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


def _live_record(session: Session, model, api_key_id: str, idempotency_key: str, *,
                 ttl_hours: float, now: datetime):
    """The `model` record of this key, or None when there is none or it is stale (a stale record
    is deleted so the caller can insert a fresh one)."""
    record = session.scalars(select(model).where(
        model.api_key_id == api_key_id, model.idempotency_key == idempotency_key)).first()
    if record is None:
        return None
    if record.created_at <= now - timedelta(hours=ttl_hours):
        session.execute(delete(model).where(model.id == record.id))
        return None
    return record


def find_replay(session: Session, api_key_id: str, idempotency_key: str, body_hash: str,
                *, ttl_hours: float, now: datetime) -> str | None:
    """The generation id to replay for this key, or None when the key is new (or stale).

    Raises `IdempotencyConflict` when the key was used with a different body. A stale record is
    deleted so the caller can insert a fresh one.
    """
    record = _live_record(session, IdempotencyRecord, api_key_id, idempotency_key,
                          ttl_hours=ttl_hours, now=now)
    if record is None:
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


# ---- resources other than jobs (AIXpose projects, pictures, quick actions ...) ------------------
def find_resource_replay(session: Session, api_key_id: str, idempotency_key: str, body_hash: str,
                         resource_type: str, *, ttl_hours: float, now: datetime) -> str | None:
    """`find_replay` for `ResourceIdempotencyRecord`s: the resource id to replay, None when the
    key is new or stale, `IdempotencyConflict` for another body or another kind of resource."""
    from .tables import ResourceIdempotencyRecord

    record = _live_record(session, ResourceIdempotencyRecord, api_key_id, idempotency_key,
                          ttl_hours=ttl_hours, now=now)
    if record is None:
        return None
    if record.request_hash != body_hash or record.resource_type != resource_type:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request. Use a new key for "
            "a different request.",
            details={"idempotency_key": idempotency_key, "resource_id": record.resource_id})
    return record.resource_id


def remember_resource(session: Session, api_key_id: str, idempotency_key: str, body_hash: str,
                      resource_type: str, resource_id: str, *, now: datetime) -> None:
    from .tables import ResourceIdempotencyRecord

    session.add(ResourceIdempotencyRecord(
        api_key_id=api_key_id, idempotency_key=idempotency_key, request_hash=body_hash,
        resource_type=resource_type, resource_id=resource_id, created_at=now))
    session.flush()


def create_idempotently(session_factory, api_key_id: str, idempotency_key: str | None,
                        body: Any, resource_type: str, create, *, ttl_hours: float
                        ) -> tuple[str, bool]:
    """Run `create(session) -> resource_id` in one transaction under `Idempotency-Key` semantics;
    returns `(resource_id, replayed)`. A concurrent twin loses on the unique constraint, rolls
    back and replays the winner."""
    from sqlalchemy.exc import IntegrityError

    from .db import transaction, utcnow

    if idempotency_key is not None:
        idempotency_key = check_idempotency_key(idempotency_key)
    body_hash = request_hash(body)
    for attempt in range(2 if idempotency_key else 1):
        try:
            with transaction(session_factory) as session:
                now = utcnow()
                if idempotency_key is not None:
                    replay = find_resource_replay(session, api_key_id, idempotency_key,
                                                  body_hash, resource_type, ttl_hours=ttl_hours,
                                                  now=now)
                    if replay is not None:
                        return replay, True
                resource_id = create(session)
                if idempotency_key is not None:
                    remember_resource(session, api_key_id, idempotency_key, body_hash,
                                      resource_type, resource_id, now=now)
                return resource_id, False
        except IntegrityError:
            if attempt == 1 or idempotency_key is None:
                raise
    raise AssertionError("unreachable")
