"""Keyset pagination, newest first: the one cursor form of every list (generations, projects,
pictures, videos, webhook deliveries).

A cursor is the last item's `(created_at, id)`, base64url without padding, so pages stay stable
while new rows arrive. `newest_first_page(session, query, model, limit, cursor)` runs the page
query (`created_at DESC, id DESC`, `limit + 1` rows to know whether there is more).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.orm import Session

from .errors import InvalidInput

MAX_PAGE_SIZE = 100


def check_limit(limit: int, maximum: int = MAX_PAGE_SIZE) -> None:
    """`InvalidInput("limit")` unless `1 <= limit <= maximum`."""
    if not 1 <= limit <= maximum:
        raise InvalidInput("limit", f"must be between 1 and {maximum}")


def encode_cursor(row: Any) -> str:
    """Opaque pagination cursor for the position just after `row` (has `created_at`, `id`)."""
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of `encode_cursor`; `InvalidInput("cursor")` when it was not made by us."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, row_id = raw.split("|", 1)
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None or not row_id:
            raise ValueError(raw)
        return moment, row_id
    except ValueError:
        raise InvalidInput("cursor", "is not a cursor returned by this API") from None


def newest_first_page(session: Session, query, model, limit: int,
                      cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of `query` (a `select(model)` with its filters), newest first;
    `(items, next_cursor)` with `next_cursor` None on the last page."""
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(or_(model.created_at < after_time,
                                and_(model.created_at == after_time, model.id < after_id)))
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    items = list(session.scalars(query))
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, encode_cursor(items[-1])
