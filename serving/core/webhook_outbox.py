"""The webhooks outbox and its delivery worker.

- `enqueue_event(session, account_id, event_type, data, webhook_url)` inserts one outbox row in
  the CALLER's transaction, so an event exists if and only if what caused it committed (a
  settled job's events come through `job_events.enqueue_job_events`).
- `deliver_due(services)` sends what is due: the URL is vetted again with the image URL rules
  (`ImageFetcher.vet_url`: https only and public addresses, unless `allow_private_urls`), the
  body is rendered on the first attempt (`webhook_payloads`) and signed (`webhook_signing`), any
  2xx is success, anything else (including redirects) is retried on the spec's schedule:
  immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — times `retry_scale` (tests shrink it).
  Each attempt is logged with its status code, error and duration. A URL that is not allowed
  fails the delivery at once (it will not become allowed by waiting). `redeliver` restarts it.
- Account-level endpoints (`webhook_endpoints`) get their own row per event they subscribe
  to, signed with the endpoint's secret; one disabled or deleted since fails without a send.
- `WebhookWorker` runs `deliver_due` in a background thread for the app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .db import transaction, utcnow
from .errors import InvalidInput, NotFound
from .pagination import check_limit, newest_first_page
from .tables import (WEBHOOK_EVENT_TYPES, Picture, Video, WebhookAttempt, WebhookDelivery,
                     WebhookEndpoint)
from .timestamps import event_time
from .webhook_endpoints import endpoint_signing_secrets, subscribed_endpoints
from .webhook_payloads import event_payload, new_event_id, render_event_data, serialise
from .webhook_signing import account_secret, signed_headers, signing_secrets

log = logging.getLogger(__name__)

RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600,
                                       10 * 3600)
ATTEMPT_TIMEOUT_S = 15.0
DELIVERY_CONCURRENCY = 4  # receivers sent to at once by one sweep
CLAIM_SECONDS = 120.0  # a claimed delivery is left alone this long by other workers
MAX_LOGGED_ERROR = 500
_NO_SYNC = {"synchronize_session": False}


# ---- enqueueing ---------------------------------------------------------------------------------
def check_webhook_url(fetcher, url: str | None, field: str = "webhook_url") -> str | None:
    """Validate a `webhook_url` when it is given (same rules as image URLs)."""
    if url is None:
        return None
    if not isinstance(url, str) or len(url) > 2000:
        raise InvalidInput(field, "must be a URL of at most 2000 characters")
    fetcher.vet_url(url, field)
    return url


def enqueue_event(session: Session, account_id: str, event_type: str,
                  data: dict[str, Any] | None, webhook_url: str | None, *,
                  subject_id: str | None = None) -> WebhookDelivery | None:
    """Put an event in the outbox inside the caller's transaction: one row for `webhook_url`
    and one per enabled endpoint of the account subscribed to `event_type`
    (`webhook_endpoints`). Returns the `webhook_url` row (None without a URL).

    `data` is the event's `data` object; pass `subject_id` instead to have it rendered on the
    first attempt (see the module docstring). `project.published` without a URL goes to every
    webhook URL the project's pictures and videos were created with.
    """
    if event_type not in WEBHOOK_EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    for endpoint in subscribed_endpoints(session, account_id, event_type):
        _enqueue_one(session, account_id, event_type, data, endpoint.url, subject_id,
                     endpoint.id)
    if not webhook_url and event_type == "project.published" and data and data.get("id"):
        sent = [_enqueue_one(session, account_id, event_type, data, url, subject_id, None)
                for url in project_webhook_urls(session, data["id"])]
        return sent[0] if sent else None
    if not webhook_url:
        return None
    return _enqueue_one(session, account_id, event_type, data, webhook_url, subject_id, None)


def _enqueue_one(session: Session, account_id: str, event_type: str,
                 data: dict[str, Any] | None, url: str, subject_id: str | None,
                 endpoint_id: str | None) -> WebhookDelivery:
    now = utcnow()
    event_id = new_event_id(now)
    payload = None
    if data is not None:
        payload = event_payload(event_id, event_type, now, data)
    delivery = WebhookDelivery(account_id=account_id, event_id=event_id, event_type=event_type,
                               url=url, endpoint_id=endpoint_id, payload=payload,
                               subject_id=subject_id, status="pending", attempt_count=0,
                               schedule_step=0, next_attempt_at=now, created_at=now)
    session.add(delivery)
    session.flush()
    return delivery


def project_webhook_urls(session: Session, project_id: str) -> list[str]:
    """The distinct webhook URLs given for a project's pictures and videos, oldest first."""
    urls: dict[str, None] = {}
    for model in (Picture, Video):
        for url in session.scalars(select(model.webhook_url)
                                   .where(model.project_id == project_id,
                                          model.webhook_url.is_not(None))
                                   .order_by(model.created_at, model.id)):
            urls.setdefault(url)
    return list(urls)


# ---- delivery -----------------------------------------------------------------------------------
def claim_due(session_factory, now: datetime, limit: int) -> list[str]:
    """Claim up to `limit` due deliveries (conditional UPDATEs); returns their ids.

    The lookup is a plain read, so an idle sweep never takes SQLite's write lock."""
    with session_factory() as session:
        ids = list(session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                   or_(WebhookDelivery.locked_until.is_(None),
                       WebhookDelivery.locked_until < now))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)))
    if not ids:
        return []
    with transaction(session_factory) as session:
        claimed = []
        for delivery_id in ids:
            result = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                       or_(WebhookDelivery.locked_until.is_(None),
                           WebhookDelivery.locked_until < now))
                .values(locked_until=now + timedelta(seconds=CLAIM_SECONDS))
                .execution_options(**_NO_SYNC))
            if result.rowcount == 1:
                claimed.append(delivery_id)
        return claimed


def deliver_due(services, *, now: datetime | None = None, retry_scale: float | None = None,
                limit: int = 20, transport: httpx.BaseTransport | None = None) -> int:
    """Send every due delivery once; returns how many attempts were made.

    `now` lets tests step through the schedule without waiting; `retry_scale` defaults to
    `settings.webhook_retry_scale`.
    """
    now = now or utcnow()
    scale = services.settings.webhook_retry_scale if retry_scale is None else retry_scale
    claimed = claim_due(services.session_factory, now, limit)
    if not claimed:
        return 0
    # A few receivers at a time, so one slow receiver does not hold up everyone else's events.
    with httpx.Client(transport=transport, timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False,
                      trust_env=False) as client, \
            ThreadPoolExecutor(max_workers=min(DELIVERY_CONCURRENCY, len(claimed)),
                               thread_name_prefix="webhook-send") as pool:
        for _ in pool.map(lambda delivery_id: attempt_delivery(
                services, client, delivery_id, now=now, retry_scale=scale), claimed):
            pass
    return len(claimed)


def attempt_delivery(services, client: httpx.Client, delivery_id: str, *, now: datetime,
                     retry_scale: float) -> WebhookDelivery:
    """One signed POST of a claimed delivery, logged and scheduled."""
    try:
        url, event_id, payload, keys = _prepare(services, delivery_id)
    except EndpointGone as exc:
        return record_attempt(services.session_factory, delivery_id, now=now, status_code=None,
                              error=str(exc), duration_ms=0, permanent=True,
                              retry_scale=retry_scale)
    except Exception as exc:
        log.exception("webhook delivery %s could not be prepared", delivery_id)
        return record_attempt(services.session_factory, delivery_id, now=now, status_code=None,
                              error=f"the event could not be rendered ({type(exc).__name__})",
                              duration_ms=0, permanent=False, retry_scale=retry_scale)
    body = serialise(payload)
    status_code, error, permanent = None, None, False
    started = time.monotonic()
    try:
        vetted = services.fetcher.vet_url(url, "webhook_url")
    except InvalidInput as exc:
        error, permanent = exc.message, True
    else:
        try:
            response = services.fetcher.send_vetted(
                client, "POST", vetted, "webhook_url",
                headers=signed_headers(keys, event_id, body, utcnow()),
                content=body.encode("utf-8"))
            status_code = response.status_code
            response.close()
            if not 200 <= status_code < 300:
                error = f"the receiver answered HTTP {status_code}"
        except InvalidInput as exc:
            error = exc.message.removeprefix("webhook_url: ")
    duration_ms = int(round((time.monotonic() - started) * 1000))
    return record_attempt(services.session_factory, delivery_id, now=now,
                          status_code=status_code, error=error, duration_ms=duration_ms,
                          permanent=permanent, retry_scale=retry_scale)


class EndpointGone(Exception):
    """The delivery's endpoint was disabled or deleted after the event was enqueued."""


def _prepare(services, delivery_id: str) -> tuple[str, str, dict[str, Any], list[str]]:
    """`(url, event id, body, signing secrets)`; a job event's body is rendered once, here."""
    with transaction(services.session_factory) as session:
        delivery = session.get_one(WebhookDelivery, delivery_id)
        if delivery.payload is None:
            data = render_event_data(session, services.storage, delivery.event_type,
                                     delivery.subject_id)
            delivery.payload = event_payload(delivery.event_id, delivery.event_type,
                                             delivery.created_at, data)
        if delivery.endpoint_id is None:
            keys = signing_secrets(account_secret(session, delivery.account_id), utcnow())
        else:
            endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id)
            if endpoint.deleted_at is not None or not endpoint.enabled:
                state = "deleted" if endpoint.deleted_at is not None else "disabled"
                raise EndpointGone(f"the webhook endpoint is {state}; nothing was sent")
            keys = endpoint_signing_secrets(endpoint, utcnow())
        return delivery.url, delivery.event_id, dict(delivery.payload), keys


def record_attempt(session_factory, delivery_id: str, *, now: datetime, status_code: int | None,
                   error: str | None, duration_ms: int, permanent: bool,
                   retry_scale: float) -> WebhookDelivery:
    """Log an attempt and move the delivery on: delivered, retried later, or failed."""
    with transaction(session_factory) as session:
        delivery = session.get_one(WebhookDelivery, delivery_id, populate_existing=True)
        delivery.attempt_count += 1
        # The first attempt after `redeliver` (which restarts the schedule) is the manual one.
        manual = delivery.schedule_step == 0 and delivery.attempt_count > 1
        session.add(WebhookAttempt(delivery_id=delivery.id, attempt=delivery.attempt_count,
                                   manual=manual, status_code=status_code,
                                   error=error[:MAX_LOGGED_ERROR] if error else None,
                                   duration_ms=duration_ms, started_at=now))
        delivery.last_status_code, delivery.last_error = status_code, error
        delivery.locked_until = None
        next_step = delivery.schedule_step + 1
        if error is None:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
        elif permanent or next_step >= len(RETRY_SCHEDULE_S):
            delivery.status, delivery.next_attempt_at = "failed", None
        else:
            delivery.schedule_step = next_step
            delay = RETRY_SCHEDULE_S[next_step] * retry_scale
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        session.flush()
        return delivery


def redeliver(session: Session, account_id: str, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again now, whatever its state; its retry schedule starts over."""
    delivery = get_delivery(session, account_id, delivery_id)
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id)
                    .values(status="pending", schedule_step=0, next_attempt_at=utcnow(),
                            locked_until=None).execution_options(**_NO_SYNC))
    session.flush()
    return session.get_one(WebhookDelivery, delivery.id, populate_existing=True)


# ---- reads --------------------------------------------------------------------------------------
def get_delivery(session: Session, account_id: str, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.account_id != account_id:
        raise NotFound("delivery_id", f"webhook delivery {delivery_id!r} was not found")
    return delivery


def list_deliveries(session: Session, account_id: str, *, limit: int = 20,
                    cursor: str | None = None, status: str | None = None,
                    ) -> tuple[list[WebhookDelivery], str | None]:
    """The account's deliveries, newest first; `(items, next_cursor)`."""
    check_limit(limit)
    query = select(WebhookDelivery).where(WebhookDelivery.account_id == account_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return newest_first_page(session, query, WebhookDelivery, limit, cursor)


def attempts_of(session: Session, delivery_id: str) -> list[WebhookAttempt]:
    return list(session.scalars(select(WebhookAttempt)
                                .where(WebhookAttempt.delivery_id == delivery_id)
                                .order_by(WebhookAttempt.attempt)))


def delivery_object(session: Session, delivery: WebhookDelivery) -> dict[str, Any]:
    """The delivery log entry as the API shows it."""
    return {
        "id": delivery.id, "object": "webhook_delivery", "event_id": delivery.event_id,
        "event_type": delivery.event_type, "url": delivery.url,
        "endpoint_id": delivery.endpoint_id, "status": delivery.status,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": event_time(delivery.next_attempt_at)
        if delivery.next_attempt_at and delivery.status == "pending" else None,
        "delivered_at": event_time(delivery.delivered_at) if delivery.delivered_at else None,
        "created_at": event_time(delivery.created_at),
        "payload": delivery.payload,
        "attempts": [{"attempt": a.attempt, "manual": a.manual, "status_code": a.status_code,
                      "error": a.error, "duration_ms": a.duration_ms,
                      "at": event_time(a.started_at)}
                     for a in attempts_of(session, delivery.id)],
    }


# ---- the background worker ----------------------------------------------------------------------
class WebhookWorker:
    """Polls the outbox every `poll_seconds` and sends what is due (one thread)."""

    def __init__(self, services, *, poll_seconds: float | None = None,
                 deliver: Callable[..., int] = deliver_due):
        self.services = services
        self.poll_seconds = (services.settings.webhook_poll_seconds if poll_seconds is None
                             else poll_seconds)
        self.deliver = deliver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="webhook-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = ATTEMPT_TIMEOUT_S + 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.deliver(self.services)
            except Exception:
                log.exception("webhook delivery sweep failed")
                sent = 0
            if not sent:
                self._stop.wait(self.poll_seconds)
