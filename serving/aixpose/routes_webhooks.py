"""`/v1/webhooks`: the account's signing secret (read, rotate), the delivery log, redelivery."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from retouch.serving.core import webhook_outbox, webhook_signing
from retouch.serving.core.db import transaction
from retouch.serving.core.idempotency import create_idempotently
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.tables import ApiKey
from retouch.serving.core.timestamps import event_time
from retouch.serving.deps import READ, WRITE, ServicesDep

from .deps import IdempotencyKey, aixpose_key, responses
from .schemas import list_payload

router = APIRouter(tags=["aixpose webhooks"])


def _secret_payload(row) -> dict:
    return {"secret": row.secret,
            "previous_secret_valid_until": event_time(row.previous_valid_until)
            if row.previous_valid_until else None}


@router.get("/webhooks/secret", responses=responses())
def get_secret(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """The `whsec_...` secret that signs this account's webhooks (Standard Webhooks)."""
    with transaction(services.session_factory) as session:
        return {"secret": webhook_signing.account_secret(session, key.account_id).secret}


@router.post("/webhooks/secret/rotate", responses=responses(409))
def rotate_secret(response: Response, services: ServicesDep,
                  key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                  idempotency_key: IdempotencyKey = None) -> dict:
    """A new secret; deliveries are signed with the previous one too for 24 hours."""
    _, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, {"rotate": "webhook_secret"},
        "webhook_secret",
        lambda session: webhook_signing.rotate_secret(session, key.account_id).account_id,
        ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with transaction(services.session_factory) as session:
        return _secret_payload(webhook_signing.account_secret(session, key.account_id))


@router.get("/webhooks/deliveries", responses=responses())
def list_deliveries(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                    status: Literal["pending", "delivered", "failed"] | None = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                    cursor: str | None = None) -> dict:
    """Every event sent (or being sent) to this account's webhook URLs with its attempts,
    newest first; pass `next_cursor` back as `cursor`."""
    with services.session_factory() as session:
        items, next_cursor = webhook_outbox.list_deliveries(session, key.account_id, limit=limit,
                                                            cursor=cursor, status=status)
        return list_payload([webhook_outbox.delivery_object(session, d) for d in items],
                            next_cursor)


@router.get("/webhooks/deliveries/{delivery_id}", responses=responses(404))
def get_delivery(delivery_id: str, services: ServicesDep,
                 key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    with services.session_factory() as session:
        delivery = webhook_outbox.get_delivery(session, key.account_id, delivery_id)
        return webhook_outbox.delivery_object(session, delivery)


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", status_code=202,
             responses=responses(404, 409, replay=True))
def redeliver(delivery_id: str, response: Response, services: ServicesDep,
              key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
              idempotency_key: IdempotencyKey = None) -> dict:
    """Send the event again now (same `webhook-id` and body); its retry schedule restarts."""
    _, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, {"redeliver": delivery_id},
        "webhook_redelivery",
        lambda session: webhook_outbox.redeliver(session, key.account_id, delivery_id).id,
        ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        delivery = webhook_outbox.get_delivery(session, key.account_id, delivery_id)
        return webhook_outbox.delivery_object(session, delivery)
