"""Webhook signing (Standard Webhooks): a `whsec_` secret per account and the signed headers.

`account_secret` creates the secret on first use; `rotate_secret` makes a new one while the
previous one keeps signing beside it for `ROTATION_GRACE`. `signed_headers` gives `webhook-id`
(the event id, the same on every retry), `webhook-timestamp` and `webhook-signature` (one
`v1,<base64 HMAC-SHA256>` per valid secret).
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import utcnow
from .tables import WebhookSecret

ROTATION_GRACE = timedelta(hours=24)  # the previous secret keeps signing this long
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def account_secret(session: Session, account_id: str) -> WebhookSecret:
    """The account's signing secret, created on first use."""
    row = session.get(WebhookSecret, account_id)
    if row is not None:
        return row
    row = WebhookSecret(account_id=account_id, secret=new_secret(), created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # a concurrent first use won the insert
        row = session.get_one(WebhookSecret, account_id, populate_existing=True)
    return row


def rotate_secret(session: Session, account_id: str) -> WebhookSecret:
    """A new secret; the old one keeps signing alongside it for `ROTATION_GRACE`."""
    row = account_secret(session, account_id)
    now = utcnow()
    row.previous_secret, row.previous_valid_until = row.secret, now + ROTATION_GRACE
    row.secret, row.rotated_at = new_secret(), now
    session.flush()
    return row


def signing_secrets(row: WebhookSecret, now: datetime) -> list[str]:
    keys = [row.secret]
    if row.previous_secret and row.previous_valid_until and row.previous_valid_until > now:
        keys.append(row.previous_secret)
    return keys


def signed_headers(keys: list[str], event_id: str, body: str, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers: one `v1,<base64 HMAC-SHA256>` signature per secret."""
    from standardwebhooks import Webhook

    moment = now.astimezone(timezone.utc)
    signatures = " ".join(Webhook(key).sign(event_id, moment, body) for key in keys)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signatures, "content-type": "application/json",
            "user-agent": "retouch-webhooks/1"}
