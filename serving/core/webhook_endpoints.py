"""Account-level webhook subscriptions (`/v1/webhooks/endpoints`).

An endpoint is a URL (held to the image URL rules, like `webhook_url`), a list of event types it
subscribes to (`WEBHOOK_EVENT_TYPES`; all of them when omitted), an `enabled` switch and its own
`whsec_` secret, shown once when it is created or rotated. `webhook_outbox.enqueue_event` puts
one outbox row per enabled, subscribed endpoint beside the per-resource `webhook_url` row;
`webhook_outbox` signs an endpoint's deliveries with the endpoint's secrets. A delivery whose
endpoint was disabled or deleted after it was enqueued fails at its next attempt without being
sent. Deleting keeps the row (`deleted_at`) so its delivery log can still be read internally;
the API answers 404 for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import utcnow
from .errors import InvalidInput, NotFound
from .pagination import check_limit, newest_first_page
from .tables import WEBHOOK_EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from .timestamps import event_time
from .webhook_signing import ROTATION_GRACE, new_secret

MAX_ENDPOINTS = 20  # per account


def check_events(events: list[str] | None, field: str = "events") -> list[str]:
    """The subscribed event types in the service's order; None means all of them."""
    if events is None:
        return list(WEBHOOK_EVENT_TYPES)
    if not events:
        raise InvalidInput(field, "must name at least one event type")
    for i, event in enumerate(events):
        if event not in WEBHOOK_EVENT_TYPES:
            raise InvalidInput(f"{field}[{i}]", f"unknown event type {event!r}; one of "
                                                f"{', '.join(WEBHOOK_EVENT_TYPES)}")
    return [e for e in WEBHOOK_EVENT_TYPES if e in events]


def create_endpoint(session: Session, account_id: str, url: str, *,
                    events: list[str] | None = None, description: str | None = None,
                    enabled: bool = True) -> WebhookEndpoint:
    """A new endpoint (the URL must already be vetted by the caller)."""
    count = len(list(session.scalars(select(WebhookEndpoint.id).where(
        WebhookEndpoint.account_id == account_id, WebhookEndpoint.deleted_at.is_(None)))))
    if count >= MAX_ENDPOINTS:
        raise InvalidInput("url", f"an account has at most {MAX_ENDPOINTS} webhook endpoints")
    now = utcnow()
    endpoint = WebhookEndpoint(account_id=account_id, url=url, description=description,
                               events=check_events(events), enabled=enabled,
                               secret=new_secret(), created_at=now, updated_at=now)
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, account_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.account_id != account_id or endpoint.deleted_at is not None:
        raise NotFound("endpoint_id", f"webhook endpoint {endpoint_id!r} was not found")
    return endpoint


def list_endpoints(session: Session, account_id: str, *, limit: int = 20,
                   cursor: str | None = None) -> tuple[list[WebhookEndpoint], str | None]:
    check_limit(limit)
    query = select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id,
                                          WebhookEndpoint.deleted_at.is_(None))
    return newest_first_page(session, query, WebhookEndpoint, limit, cursor)


def update_endpoint(session: Session, endpoint: WebhookEndpoint, changes: dict[str, Any],
                    ) -> WebhookEndpoint:
    """Apply `url` (vetted by the caller), `events`, `enabled`, `description` when given."""
    if "events" in changes:
        endpoint.events = check_events(changes["events"])
    for name in ("url", "enabled", "description"):
        if name in changes:
            setattr(endpoint, name, changes[name])
    endpoint.updated_at = utcnow()
    session.flush()
    return endpoint


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    endpoint.deleted_at = endpoint.updated_at = utcnow()
    endpoint.enabled = False
    session.flush()


def rotate_endpoint_secret(session: Session, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """A new secret; the previous one keeps signing beside it for `ROTATION_GRACE`."""
    now = utcnow()
    endpoint.previous_secret, endpoint.previous_valid_until = endpoint.secret, now + ROTATION_GRACE
    endpoint.secret, endpoint.updated_at = new_secret(), now
    session.flush()
    return endpoint


def subscribed_endpoints(session: Session, account_id: str,
                         event_type: str) -> list[WebhookEndpoint]:
    """The account's enabled endpoints that subscribe to `event_type`, oldest first."""
    endpoints = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.account_id == account_id, WebhookEndpoint.enabled.is_(True),
               WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id))
    return [e for e in endpoints if event_type in e.events]


def endpoint_signing_secrets(endpoint: WebhookEndpoint, now) -> list[str]:
    keys = [endpoint.secret]
    if (endpoint.previous_secret and endpoint.previous_valid_until
            and endpoint.previous_valid_until > now):
        keys.append(endpoint.previous_secret)
    return keys


def list_endpoint_deliveries(session: Session, endpoint: WebhookEndpoint, *, limit: int = 20,
                             cursor: str | None = None, status: str | None = None,
                             ) -> tuple[list[WebhookDelivery], str | None]:
    check_limit(limit)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return newest_first_page(session, query, WebhookDelivery, limit, cursor)


def endpoint_object(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    """The endpoint as the API shows it; `secret` only right after creating or rotating it."""
    body = {"id": endpoint.id, "object": "webhook_endpoint", "url": endpoint.url,
            "description": endpoint.description, "events": list(endpoint.events),
            "enabled": endpoint.enabled, "created_at": event_time(endpoint.created_at),
            "updated_at": event_time(endpoint.updated_at)}
    if with_secret:
        body["secret"] = endpoint.secret
        body["previous_secret_valid_until"] = (event_time(endpoint.previous_valid_until)
                                               if endpoint.previous_valid_until else None)
    return body
