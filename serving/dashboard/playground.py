"""The playground's API key: dashboard jobs go through the very path API jobs take.

Core charges every job to an API key (budgets, per-request limit, rate limit, upload ownership),
so each account gets one dedicated Wixma key named `PLAYGROUND_KEY_NAME`, made on first use. Its
secret is never shown or kept, so only the dashboard can use it; it appears in Settings like any
key, where its spending shows and where pausing it stops the playground. A revoked playground
key is replaced by a fresh one on the next playground job.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from retouch.serving.core import keys
from retouch.serving.core.tables import ApiKey

PLAYGROUND_KEY_NAME = "Dashboard playground"


def playground_key(session: Session, account_id: str) -> ApiKey:
    """The account's playground key (active or paused), created when there is none."""
    found = session.scalars(
        select(ApiKey).where(ApiKey.account_id == account_id, ApiKey.surface == "wixma",
                             ApiKey.name == PLAYGROUND_KEY_NAME, ApiKey.status != "revoked")
        .order_by(ApiKey.created_at.desc())).first()
    if found is not None:
        return found
    key, _secret_discarded = keys.create_key(session, account_id, surface="wixma",
                                             name=PLAYGROUND_KEY_NAME)
    return key
