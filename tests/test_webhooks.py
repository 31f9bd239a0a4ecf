"""Signed webhooks: the outbox is written in the caller's transaction, deliveries are signed per
Standard Webhooks (verified with the `standardwebhooks` library), retried on the spec's schedule,
logged, redeliverable, and held to the SSRF rules of image URLs."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core import accounts, keys, webhook_outbox, webhook_signing
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.tables import WebhookDelivery
from retouch.serving.services import build_services

from api_fixtures import api_for, assert_error, make_settings, services_on
from db_fixtures import BACKENDS
from webhook_receiver import webhook_receiver

PICTURE = {"id": "pic_generated", "project_id": "prj_123", "status": "completed",
           "public_url": "https://cdn.example/projects/prj_123/pic_generated.jpg",
           "version": 1, "subversion": 0, "scene_type": "interior",
           "scene_location": "living_room",
           "source_instruction": {"source": "preset",
                                  "actions": ["interior-style-japandi",
                                              "interior-decoration-medium"]}}


@pytest.fixture(params=BACKENDS)
def services(request, tmp_path):
    """Services on SQLite, and on a fresh PostgreSQL schema when RETOUCH_TEST_POSTGRES_URL is
    set."""
    yield from services_on(request.param, tmp_path, "test_webhooks", allow_private_urls=True)


def new_account(services) -> str:
    with transaction(services.session_factory) as session:
        return accounts.create_account(session, "hooks", plan="plus", credits=100).id


def enqueue(services, account_id: str, url: str, data=PICTURE) -> WebhookDelivery:
    with transaction(services.session_factory) as session:
        return webhook_outbox.enqueue_event(session, account_id, "picture.completed", data, url)


def secret_of(services, account_id: str) -> str:
    with transaction(services.session_factory) as session:
        return webhook_signing.account_secret(session, account_id).secret


def test_a_delivery_is_signed_and_shaped_like_the_seed_example(services):
    account_id = new_account(services)
    with webhook_receiver() as receiver:
        delivery = enqueue(services, account_id, receiver.url)
        assert webhook_outbox.deliver_due(services) == 1
        [post] = receiver.received
    secret = secret_of(services, account_id)
    assert secret.startswith("whsec_")
    payload = Webhook(secret).verify(post.body, post.headers)
    assert set(payload) == {"id", "type", "created_at", "data"}
    assert payload["type"] == "picture.completed" and payload["data"] == PICTURE
    assert re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", payload["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", payload["created_at"])
    assert post.headers["webhook-id"] == payload["id"] == delivery.event_id
    assert post.path == "/hooks/aixpose"

    tampered = post.body.replace(b"pic_generated", b"pic_forged")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, post.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_signing.new_secret()).verify(post.body, post.headers)


def test_the_outbox_row_belongs_to_the_callers_transaction(services):
    account_id = new_account(services)
    with pytest.raises(RuntimeError):
        with transaction(services.session_factory) as session:
            webhook_outbox.enqueue_event(session, account_id, "picture.failed", PICTURE,
                                   "http://127.0.0.1:9/x")
            raise RuntimeError("the settlement failed")
    with services.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    with transaction(services.session_factory) as session:  # no URL: nothing to deliver
        assert webhook_outbox.enqueue_event(session, account_id, "picture.failed", PICTURE,
                                            None) is None


def test_failed_attempts_are_retried_on_the_schedule_and_logged(services):
    account_id = new_account(services)
    with webhook_receiver([500, 200]) as receiver:
        delivery = enqueue(services, account_id, receiver.url)
        start = utcnow()
        assert webhook_outbox.deliver_due(services, now=start) == 1
        with services.session_factory() as session:
            row = session.get_one(WebhookDelivery, delivery.id)
            assert row.status == "pending" and row.last_status_code == 500
            assert row.next_attempt_at == start + timedelta(seconds=5)  # the spec's 2nd step
        assert webhook_outbox.deliver_due(services, now=start + timedelta(seconds=4)) == 0
        assert webhook_outbox.deliver_due(services, now=start + timedelta(seconds=5)) == 1
        first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # same message
    assert first.body == second.body
    with services.session_factory() as session:
        row = session.get_one(WebhookDelivery, delivery.id)
        shown = webhook_outbox.delivery_object(session, row)
    assert shown["status"] == "delivered" and shown["attempt_count"] == 2
    assert [a["status_code"] for a in shown["attempts"]] == [500, 200]
    assert shown["attempts"][0]["error"] == "the receiver answered HTTP 500"
    assert shown["attempts"][1]["error"] is None
    assert all(a["duration_ms"] >= 0 and not a["manual"] for a in shown["attempts"])


def test_a_receiver_that_keeps_failing_gets_the_whole_schedule_then_fails(services):
    account_id = new_account(services)
    scale = 0.01
    with webhook_receiver([503]) as receiver:
        delivery = enqueue(services, account_id, receiver.url)
        now, gaps = utcnow(), []
        for _ in webhook_outbox.RETRY_SCHEDULE_S:
            assert webhook_outbox.deliver_due(services, now=now, retry_scale=scale) == 1
            with services.session_factory() as session:
                row = session.get_one(WebhookDelivery, delivery.id)
            if row.next_attempt_at is not None:
                gaps.append((row.next_attempt_at - now).total_seconds())
                now = row.next_attempt_at
        assert len(receiver.received) == len(webhook_outbox.RETRY_SCHEDULE_S) == 8
    assert row.status == "failed" and row.attempt_count == 8
    assert gaps == pytest.approx([s * scale for s in (5, 300, 1800, 7200, 18000, 36000, 36000)])


def test_slow_receivers_are_sent_to_in_parallel(services):
    import time

    account_id = new_account(services)
    with webhook_receiver(delay_s=0.6) as receiver:
        for _ in range(4):
            enqueue(services, account_id, receiver.url)
        started = time.monotonic()
        assert webhook_outbox.deliver_due(services) == 4
        elapsed = time.monotonic() - started
    assert len(receiver.received) == 4
    assert elapsed < 4 * 0.6 * 0.75, elapsed  # one after another would take 2.4 s
    with services.session_factory() as session:
        assert set(session.scalars(select(WebhookDelivery.status))) == {"delivered"}


def test_private_webhook_urls_are_refused_without_allow_private_urls(tmp_path):
    services = build_services(make_settings(tmp_path, allow_private_urls=False))
    try:
        for url in ("http://127.0.0.1:8080/hook", "https://127.0.0.1/hook",
                    "https://10.1.2.3/hook", "https://[::1]/hook"):
            with pytest.raises(InvalidInput) as error:
                webhook_outbox.check_webhook_url(services.fetcher, url)
            assert error.value.field == "webhook_url"
        account_id = new_account(services)
        with webhook_receiver() as receiver:
            # Enqueued anyway (e.g. the rules changed): the delivery re-checks and gives up.
            delivery = enqueue(services, account_id, receiver.url.replace("http:", "https:"))
            assert webhook_outbox.deliver_due(services) == 1
            assert receiver.received == []
        with services.session_factory() as session:
            row = session.get_one(WebhookDelivery, delivery.id)
            shown = webhook_outbox.delivery_object(session, row)
        assert row.status == "failed" and row.attempt_count == 1
        assert "private" in shown["attempts"][0]["error"]
    finally:
        services.engine.dispose()


def test_aixpose_requests_vet_webhook_urls_by_address(tmp_path):
    """Picture, enhancement and video requests check `webhook_url` with the address rules at
    request time, not only its scheme: an https URL to a loopback, private or link-local host is
    refused, and nothing is created."""
    import base64

    from retouch.serving.core.tables import Generation, Picture, Video

    from api_fixtures import image_bytes

    with api_for(make_settings(tmp_path)) as api:  # private URLs not allowed
        account_id = api.account()
        with transaction(api.services.session_factory) as session:
            _, secret = keys.create_key(session, account_id, surface="aixpose")
        headers = api.headers(secret)
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "hooks"}).json()["id"]
        picture = {"source": {"type": "base64", "media_type": "image/png",
                              "data": base64.b64encode(image_bytes(64, 48)).decode()},
                   "scene_type": "interior"}
        for url in ("https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://[::1]/hook"):
            assert_error(api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers,
                                         json={**picture, "webhook_url": url}),
                         400, "invalid_input", "webhook_url")
        created = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers,
                                  json=picture)
        assert created.status_code == 201, created.text
        assert_error(api.client.post(
            f"/v1/pictures/{created.json()['id']}/enhancements", headers=headers,
            json={"instruction": {"source": "preset", "actions": ["interior-style-japandi"]},
                  "webhook_url": "https://192.168.0.7/hook"}), 400, "invalid_input", "webhook_url")
        assert_error(api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "webhook_url": "https://169.254.169.254/hook"}),
            400, "invalid_input", "webhook_url")
        with api.services.session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Picture)) == 1
            assert session.scalar(select(func.count()).select_from(Generation)) == 0
            assert session.scalar(select(func.count()).select_from(Video)) == 0


def read_when(api, path: str, headers: dict, ready, timeout_s: float = 10.0) -> dict:
    """GET `path` until `ready(body)` or the timeout (the worker records an attempt only once
    the receiver has answered, a moment after the receiver saw it); the last body read."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = api.client.get(path, headers=headers).json()
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_secret_rotation_deliveries_log_and_redelivery_over_http(tmp_path):
    settings = make_settings(tmp_path, allow_private_urls=True, webhook_poll_seconds=0.05)
    with api_for(settings) as api, webhook_receiver() as receiver:
        account_id = api.account()
        with transaction(api.services.session_factory) as session:
            _, secret = keys.create_key(session, account_id, surface="aixpose")
        headers = api.headers(secret)
        first = api.client.get("/v1/webhooks/secret", headers=headers)
        assert first.status_code == 200 and set(first.json()) == {"secret"}
        old = first.json()["secret"]
        assert api.client.get("/v1/webhooks/secret", headers=headers).json()["secret"] == old
        rotated = api.client.post("/v1/webhooks/secret/rotate",
                                  headers=api.headers(secret, **{"Idempotency-Key": "rot-1"}))
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new.startswith("whsec_") and new != old
        again = api.client.post("/v1/webhooks/secret/rotate",
                                headers=api.headers(secret, **{"Idempotency-Key": "rot-1"}))
        assert again.json()["secret"] == new  # replayed, not rotated twice
        assert api.client.get("/v1/webhooks/secret", headers=headers).json()["secret"] == new

        delivery = enqueue(api.services, account_id, receiver.url)
        [post] = receiver.wait_for(1)  # sent by the app's background worker
        assert Webhook(new).verify(post.body, post.headers)["id"] == delivery.event_id
        assert Webhook(old).verify(post.body, post.headers)  # still valid during the grace

        log = read_when(api, "/v1/webhooks/deliveries", headers,
                        lambda body: body["data"][0]["status"] != "pending")
        assert log["object"] == "list" and log["has_more"] is False
        [entry] = log["data"]
        assert entry["id"] == delivery.id and entry["status"] == "delivered"
        assert entry["event_type"] == "picture.completed" and entry["attempt_count"] == 1
        assert json.loads(post.body) == entry["payload"]

        again = api.client.post(f"/v1/webhooks/deliveries/{delivery.id}/redeliver",
                                headers=headers)
        assert again.status_code == 202, again.text
        first_post, second_post = receiver.wait_for(2)
        assert second_post.headers["webhook-id"] == first_post.headers["webhook-id"]
        assert second_post.body == first_post.body
        shown = read_when(api, f"/v1/webhooks/deliveries/{delivery.id}", headers,
                          lambda body: body["attempt_count"] >= 2)
        assert shown["attempt_count"] == 2 and shown["attempts"][1]["manual"] is True

        missing = api.client.post("/v1/webhooks/deliveries/whd_nope/redeliver", headers=headers)
        assert_error(missing, 404, "invalid_input", "delivery_id")
        other_key = api.key()[1]  # a Wixma key does not open the AIXpose surface
        assert api.client.get("/v1/webhooks/secret",
                              headers=api.headers(other_key)).status_code == 401


SEED_PICTURE_KEYS = {"id", "project_id", "status", "public_url", "version", "subversion",
                     "scene_type", "scene_location", "source_instruction"}


def test_settled_picture_jobs_and_publishing_send_their_events(tmp_path):
    """An enhancement with a webhook_url: completing its job sends one `picture.completed` per
    variant (the seed's payload), failing one sends `picture.failed`, publishing the project
    sends `project.published` to the project's webhook URL."""
    import base64

    from retouch.serving.core import jobs

    from api_fixtures import finish_next_job, image_bytes

    settings = make_settings(tmp_path, allow_private_urls=True, webhook_poll_seconds=0.05)
    with api_for(settings) as api, webhook_receiver() as receiver:  # no executor: we settle
        account_id = api.account()
        with transaction(api.services.session_factory) as session:
            _, secret = keys.create_key(session, account_id, surface="aixpose")
        headers = api.headers(secret)
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "hooks"}).json()["id"]
        source = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers, json={
            "source": {"type": "base64", "media_type": "image/png",
                       "data": base64.b64encode(image_bytes(64, 48)).decode()},
            "scene_type": "interior", "scene_location": "living_room"})
        assert source.status_code == 201, source.text
        instruction = {"source": "preset", "actions": ["interior-style-japandi"]}
        enhanced = api.client.post(f"/v1/pictures/{source.json()['id']}/enhancements",
                                   headers=headers, json={"instruction": instruction,
                                                          "variants": 2,
                                                          "webhook_url": receiver.url})
        assert enhanced.status_code == 201, enhanced.text
        variants = [p["id"] for p in enhanced.json()["data"]]
        finish_next_job(api, [image_bytes(32, 24), image_bytes(32, 24, color=(1, 2, 3))])

        posts = receiver.wait_for(2)
        secret_value = api.client.get("/v1/webhooks/secret", headers=headers).json()["secret"]
        events = [Webhook(secret_value).verify(p.body, p.headers) for p in posts]
        assert {e["type"] for e in events} == {"picture.completed"}
        assert sorted(e["data"]["id"] for e in events) == sorted(variants)
        for event in events:
            data = event["data"]
            assert SEED_PICTURE_KEYS <= set(data) and data["status"] == "completed"
            assert data["project_id"] == project_id and data["version"] == 1
            assert data["source_instruction"]["actions"] == instruction["actions"]
            assert api.client.get(data["public_url"].removeprefix("http://testserver")
                                  ).status_code == 200
        assert sorted(e["data"]["subversion"] for e in events) == [0, 1]

        again = api.client.post(f"/v1/pictures/{variants[0]}/enhancements", headers=headers,
                                json={"instruction": instruction, "webhook_url": receiver.url})
        assert again.status_code == 201, again.text
        job = jobs.lease_next_job(api.services.session_factory, "test-worker", 30)
        assert jobs.fail_job(api.services.session_factory, job.id, "test-worker",
                             "service_unavailable", "the GPU fell off")
        failed = Webhook(secret_value).verify(receiver.wait_for(3)[2].body,
                                              receiver.received[2].headers)
        assert failed["type"] == "picture.failed"
        assert failed["data"]["id"] == again.json()["data"][0]["id"]
        assert failed["data"]["status"] == "failed"

        assert api.client.post(f"/v1/pictures/{variants[1]}/approve",
                               headers=headers).status_code in (200, 201)
        published = api.client.post(f"/v1/projects/{project_id}/publish", headers=headers)
        assert published.status_code == 200, published.text
        event = Webhook(secret_value).verify(receiver.wait_for(4)[3].body,
                                             receiver.received[3].headers)
        assert event["type"] == "project.published" and event["data"]["id"] == project_id
        assert [m["id"] for m in event["data"]["media"]] == [variants[1]]
