"""`/v1/webhooks`: the account's signing secret (read, rotate), the delivery log, redelivery,
and account-level endpoints (subscriptions with an event filter and their own secret)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fastapi import APIRouter, Depends, Query, Response

from retouch.serving.core import webhook_endpoints, webhook_outbox, webhook_signing
from retouch.serving.core.db import transaction
from retouch.serving.core.errors import NotFound
from retouch.serving.core.idempotency import create_idempotently
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.tables import ApiKey
from retouch.serving.core.timestamps import event_time
from retouch.serving.deps import READ, WRITE, ServicesDep

from .deps import IdempotencyKey, aixpose_key, check_webhook_url, responses
from .responses import (DeletedWebhookEndpoint, RotatedWebhookSecret, WebhookDelivery,
                        WebhookDeliveryList, WebhookEndpoint, WebhookEndpointList,
                        WebhookEndpointWithSecret, WebhookSecret)
from .schemas import list_payload

router = APIRouter(tags=["aixpose webhooks"])


def _secret_payload(row) -> dict:
    return {"secret": row.secret,
            "previous_secret_valid_until": event_time(row.previous_valid_until)
            if row.previous_valid_until else None}


@router.get("/webhooks/secret", response_model=WebhookSecret, responses=responses())
def get_secret(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """The `whsec_...` secret that signs this account's webhooks (Standard Webhooks)."""
    with transaction(services.session_factory) as session:
        return {"secret": webhook_signing.account_secret(session, key.account_id).secret}


@router.post("/webhooks/secret/rotate", response_model=RotatedWebhookSecret,
             responses=responses(409))
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


@router.get("/webhooks/deliveries", response_model=WebhookDeliveryList,
            responses=responses())
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


@router.get("/webhooks/deliveries/{delivery_id}", response_model=WebhookDelivery,
            responses=responses(404))
def get_delivery(delivery_id: str, services: ServicesDep,
                 key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    with services.session_factory() as session:
        delivery = webhook_outbox.get_delivery(session, key.account_id, delivery_id)
        return webhook_outbox.delivery_object(session, delivery)


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=WebhookDelivery,
             responses=responses(404, 409, replay=WebhookDelivery))
def redeliver(delivery_id: str, response: Response, services: ServicesDep,
              key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
              idempotency_key: IdempotencyKey = None) -> dict:
    """Send the event again now (same `webhook-id` and body); its retry schedule restarts."""
    return _redeliver(services, key, idempotency_key, response, delivery_id,
                      {"redeliver": delivery_id},
                      lambda session: webhook_outbox.redeliver(session, key.account_id,
                                                               delivery_id).id)


def _redeliver(services, key: ApiKey, idempotency_key: str | None, response: Response,
               delivery_id: str, request_body: dict, again) -> dict:
    """Run `again` once per Idempotency-Key (a replay answers 200) and return the delivery."""
    _, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, request_body, "webhook_redelivery",
        again, ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        delivery = webhook_outbox.get_delivery(session, key.account_id, delivery_id)
        return webhook_outbox.delivery_object(session, delivery)


# ---- account-level endpoints --------------------------------------------------------------------
class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    events: list[str] | None = Field(
        default=None, description="event types to receive (`picture.completed`, "
                                  "`picture.failed`, `video.completed`, `video.failed`, "
                                  "`project.published`); all of them when omitted")
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    events: list[str] | None = None
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None


@router.post("/webhooks/endpoints", status_code=201, response_model=WebhookEndpointWithSecret,
             responses=responses(400, 409, replay=WebhookEndpointWithSecret))
def create_endpoint(body: EndpointCreate, response: Response, services: ServicesDep,
                    key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                    idempotency_key: IdempotencyKey = None) -> dict:
    """Subscribe a URL to the account's events; the answer carries the endpoint's `whsec_`
    secret, shown only here and when it is rotated."""
    check_webhook_url(body.url, services, "url")
    webhook_endpoints.check_events(body.events)
    endpoint_id, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, body.model_dump(), "webhook_endpoint",
        lambda session: webhook_endpoints.create_endpoint(
            session, key.account_id, body.url, events=body.events,
            description=body.description, enabled=body.enabled).id,
        ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        return webhook_endpoints.endpoint_object(endpoint, with_secret=True)


@router.get("/webhooks/endpoints", response_model=WebhookEndpointList,
            responses=responses(400))
def list_endpoints(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                   limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                   cursor: str | None = None) -> dict:
    """The account's endpoints, newest first (without their secrets)."""
    with services.session_factory() as session:
        items, next_cursor = webhook_endpoints.list_endpoints(session, key.account_id,
                                                              limit=limit, cursor=cursor)
        return list_payload([webhook_endpoints.endpoint_object(e) for e in items], next_cursor)


@router.get("/webhooks/endpoints/{endpoint_id}", response_model=WebhookEndpoint,
            responses=responses(400, 404))
def get_endpoint(endpoint_id: str, services: ServicesDep,
                 key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    with services.session_factory() as session:
        return webhook_endpoints.endpoint_object(
            webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id))


@router.patch("/webhooks/endpoints/{endpoint_id}", response_model=WebhookEndpoint,
              responses=responses(400, 404))
def update_endpoint(endpoint_id: str, body: EndpointUpdate, services: ServicesDep,
                    key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """Change the URL, the event filter, the description, or enable/disable the endpoint."""
    changes = body.model_dump(exclude_unset=True)
    for name in ("url", "enabled"):
        if name in changes and changes[name] is None:
            changes.pop(name)
    if "url" in changes:
        check_webhook_url(changes["url"], services, "url")
    if "events" in changes:
        webhook_endpoints.check_events(changes["events"])
    with transaction(services.session_factory) as session:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        return webhook_endpoints.endpoint_object(
            webhook_endpoints.update_endpoint(session, endpoint, changes))


@router.delete("/webhooks/endpoints/{endpoint_id}", response_model=DeletedWebhookEndpoint,
               responses=responses(400, 404))
def delete_endpoint(endpoint_id: str, services: ServicesDep,
                    key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """Unsubscribe: nothing more is sent to it, pending deliveries included."""
    with transaction(services.session_factory) as session:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        webhook_endpoints.delete_endpoint(session, endpoint)
        return {"id": endpoint.id, "object": "webhook_endpoint", "deleted": True}


@router.post("/webhooks/endpoints/{endpoint_id}/secret/rotate",
             response_model=WebhookEndpointWithSecret, responses=responses(404, 409))
def rotate_endpoint_secret(endpoint_id: str, response: Response, services: ServicesDep,
                           key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                           idempotency_key: IdempotencyKey = None) -> dict:
    """A new secret for this endpoint (shown once); the previous one also signs for 24 hours."""
    def rotate(session) -> str:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        return webhook_endpoints.rotate_endpoint_secret(session, endpoint).id

    _, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, {"rotate": endpoint_id},
        "webhook_endpoint_secret", rotate, ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        return webhook_endpoints.endpoint_object(endpoint, with_secret=True)


@router.get("/webhooks/endpoints/{endpoint_id}/deliveries", response_model=WebhookDeliveryList,
            responses=responses(400, 404))
def list_endpoint_deliveries(endpoint_id: str, services: ServicesDep,
                             key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                             status: Literal["pending", "delivered", "failed"] | None = None,
                             limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                             cursor: str | None = None) -> dict:
    """The events sent (or being sent) to this endpoint with their attempts, newest first."""
    with services.session_factory() as session:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        items, next_cursor = webhook_endpoints.list_endpoint_deliveries(
            session, endpoint, limit=limit, cursor=cursor, status=status)
        return list_payload([webhook_outbox.delivery_object(session, d) for d in items],
                            next_cursor)


@router.post("/webhooks/endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
             status_code=202, response_model=WebhookDelivery,
             responses=responses(404, 409, replay=WebhookDelivery))
def redeliver_to_endpoint(endpoint_id: str, delivery_id: str, response: Response,
                          services: ServicesDep,
                          key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                          idempotency_key: IdempotencyKey = None) -> dict:
    """Send one of this endpoint's events again now (same `webhook-id` and body)."""
    def again(session) -> str:
        endpoint = webhook_endpoints.get_endpoint(session, key.account_id, endpoint_id)
        delivery = webhook_outbox.get_delivery(session, key.account_id, delivery_id)
        if delivery.endpoint_id != endpoint.id:
            raise NotFound("delivery_id", f"webhook delivery {delivery_id!r} was not found "
                                          f"for endpoint {endpoint_id!r}")
        return webhook_outbox.redeliver(session, key.account_id, delivery_id).id

    return _redeliver(services, key, idempotency_key, response, delivery_id,
                      {"redeliver": delivery_id, "endpoint": endpoint_id}, again)
