"""How the APIs write a moment in time (UTC, `Z` suffix).

- `format_timestamp`: `2026-06-07T10:00:00.000Z`, millisecond precision: every resource's
  `created_at` and friends, on both surfaces.
- `event_time`: `2026-05-06T05:56:00Z`, whole seconds: webhook events and the delivery log.
"""

from __future__ import annotations

from datetime import datetime, timezone


def format_timestamp(value: datetime) -> str:
    """`2026-06-07T10:00:00.000Z`: UTC, millisecond precision, `Z` suffix."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def event_time(moment: datetime) -> str:
    """`2026-05-06T05:56:00Z`: UTC, whole seconds (the seed's `created_at`)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
