"""Account-level webhook endpoints: subscribed events arrive signed with the endpoint's own
secret, filtered events and disabled endpoints get nothing, deliveries are logged per endpoint
and redeliverable, and one account cannot see or change another's endpoints."""

from __future__ import annotations

import base64
import json
import time

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from retouch.serving.core import accounts, keys, webhook_endpoints, webhook_outbox
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import WebhookDelivery

from api_fixtures import (api_for, assert_error, finish_next_job, image_bytes, make_settings,
                          services_on)
from db_fixtures import BACKENDS
from webhook_receiver import webhook_receiver

PICTURE = {"id": "pic_generated", "project_id": "prj_123", "status": "failed"}


@pytest.fixture(params=BACKENDS)
def services(request, tmp_path):
    yield from services_on(request.param, tmp_path, "test_webhook_endpoints", allow_private_urls=True)


def aixpose_key(api) -> dict[str, str]:
    account_id = api.account()
    with transaction(api.services.session_factory) as session:
        _, secret = keys.create_key(session, account_id, surface="aixpose")
    return api.headers(secret)


def wait_until_sent(services, timeout_s: float = 30.0) -> None:
    """Until the outbox has nothing pending (the background worker sent everything)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with services.session_factory() as session:
            pending = session.scalars(select(WebhookDelivery.id)
                                      .where(WebhookDelivery.status == "pending")).all()
        if not pending:
            return
        assert time.monotonic() < deadline, f"still pending: {pending}"
        time.sleep(0.05)


def enhance_and_finish(api, headers) -> list[str]:
    """An enhancement with no `webhook_url`, completed by a worker; returns its picture ids."""
    project_id = api.client.post("/v1/projects", headers=headers,
                                 json={"name": "hooks"}).json()["id"]
    source = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers, json={
        "source": {"type": "base64", "media_type": "image/png",
                   "data": base64.b64encode(image_bytes(64, 48)).decode()},
        "scene_type": "interior", "scene_location": "living_room"})
    assert source.status_code == 201, source.text
    enhanced = api.client.post(f"/v1/pictures/{source.json()['id']}/enhancements",
                               headers=headers, json={"instruction": {
                                   "source": "preset", "actions": ["interior-style-japandi"]}})
    assert enhanced.status_code == 201, enhanced.text
    finish_next_job(api, [image_bytes(32, 24)])
    return [p["id"] for p in enhanced.json()["data"]]


def test_subscribed_events_arrive_signed_with_the_endpoints_secret(tmp_path):
    settings = make_settings(tmp_path, allow_private_urls=True, webhook_poll_seconds=0.05)
    with api_for(settings) as api, webhook_receiver() as completed_only, \
            webhook_receiver() as everything, webhook_receiver() as disabled:
        headers = aixpose_key(api)
        created = api.client.post("/v1/webhooks/endpoints", headers=headers, json={
            "url": completed_only.url, "events": ["picture.completed"],
            "description": "CRM"})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["object"] == "webhook_endpoint" and endpoint["id"].startswith("whe_")
        assert endpoint["events"] == ["picture.completed"] and endpoint["enabled"] is True
        secret = endpoint["secret"]
        assert secret.startswith("whsec_")
        shown = api.client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=headers)
        assert shown.status_code == 200 and "secret" not in shown.json()  # shown once
        assert shown.json()["description"] == "CRM"

        all_events = api.client.post("/v1/webhooks/endpoints", headers=headers,
                                     json={"url": everything.url}).json()
        assert all_events["events"] == ["picture.completed", "picture.failed",
                                        "video.completed", "video.failed", "project.published"]
        off = api.client.post("/v1/webhooks/endpoints", headers=headers,
                              json={"url": disabled.url}).json()
        patched = api.client.patch(f"/v1/webhooks/endpoints/{off['id']}", headers=headers,
                                   json={"enabled": False})
        assert patched.status_code == 200 and patched.json()["enabled"] is False
        listed = api.client.get("/v1/webhooks/endpoints", headers=headers).json()
        assert [e["id"] for e in listed["data"]] == [off["id"], all_events["id"], endpoint["id"]]
        assert all("secret" not in e for e in listed["data"])

        pictures = enhance_and_finish(api, headers)  # the job's picture.completed
        with transaction(api.services.session_factory) as session:  # a filtered event type
            webhook_outbox.enqueue_event(session, _account_of(api, endpoint["id"]),
                                         "picture.failed", PICTURE, None)
        wait_until_sent(api.services)

        [post] = completed_only.received
        payload = Webhook(secret).verify(post.body, post.headers)
        assert payload["type"] == "picture.completed" and payload["data"]["id"] == pictures[0]
        account_secret = api.client.get("/v1/webhooks/secret", headers=headers).json()["secret"]
        with pytest.raises(WebhookVerificationError):  # not the account's secret
            Webhook(account_secret).verify(post.body, post.headers)
        assert sorted(json.loads(p.body)["type"] for p in everything.received) == [
            "picture.completed", "picture.failed"]
        assert Webhook(all_events["secret"]).verify(everything.received[0].body,
                                                    everything.received[0].headers)
        assert disabled.received == []

        log = api.client.get(f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries",
                             headers=headers).json()
        [entry] = log["data"]
        assert entry["endpoint_id"] == endpoint["id"] and entry["status"] == "delivered"
        assert entry["event_type"] == "picture.completed" and entry["url"] == completed_only.url
        assert json.loads(post.body) == entry["payload"]
        assert api.client.get(f"/v1/webhooks/endpoints/{off['id']}/deliveries",
                              headers=headers).json()["data"] == []

        again = api.client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries/"
                                f"{entry['id']}/redeliver", headers=headers)
        assert again.status_code == 202, again.text
        first, second = completed_only.wait_for(2)
        assert second.body == first.body
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        assert Webhook(secret).verify(second.body, second.headers)
        other = everything_delivery(api, headers, all_events["id"])
        assert_error(api.client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries/"
                                     f"{other}/redeliver", headers=headers),
                     404, "invalid_input", "delivery_id")

        rotated = api.client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/secret/rotate",
                                  headers=headers)
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret != secret and rotated.json()["previous_secret_valid_until"]
        api.client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries/{entry['id']}"
                        "/redeliver", headers=headers)
        third = completed_only.wait_for(3)[2]
        assert Webhook(new_secret).verify(third.body, third.headers)
        assert Webhook(secret).verify(third.body, third.headers)  # during the grace


def _account_of(api, endpoint_id: str) -> str:
    from retouch.serving.core.tables import WebhookEndpoint

    with api.services.session_factory() as session:
        return session.get_one(WebhookEndpoint, endpoint_id).account_id


def everything_delivery(api, headers, endpoint_id: str) -> str:
    log = api.client.get(f"/v1/webhooks/endpoints/{endpoint_id}/deliveries",
                         headers=headers).json()
    return log["data"][0]["id"]


def test_endpoints_are_private_to_their_account_and_validated(tmp_path):
    settings = make_settings(tmp_path, allow_private_urls=True)
    with api_for(settings) as api, webhook_receiver() as receiver:
        mine, theirs = aixpose_key(api), aixpose_key(api)
        endpoint = api.client.post("/v1/webhooks/endpoints", headers=mine,
                                   json={"url": receiver.url}).json()
        path = f"/v1/webhooks/endpoints/{endpoint['id']}"
        assert api.client.get("/v1/webhooks/endpoints", headers=theirs).json()["data"] == []
        for response in (api.client.get(path, headers=theirs),
                         api.client.patch(path, headers=theirs, json={"enabled": False}),
                         api.client.delete(path, headers=theirs),
                         api.client.post(f"{path}/secret/rotate", headers=theirs),
                         api.client.get(f"{path}/deliveries", headers=theirs)):
            assert_error(response, 404, "invalid_input", "endpoint_id")
        assert api.client.get(path, headers=mine).json()["enabled"] is True

        assert_error(api.client.post("/v1/webhooks/endpoints", headers=mine, json={
            "url": receiver.url, "events": ["picture.completed", "picture.deleted"]}),
            400, "invalid_input", "events[1]")
        assert_error(api.client.post("/v1/webhooks/endpoints", headers=mine,
                                     json={"url": receiver.url, "events": []}),
                     400, "invalid_input", "events")
        assert_error(api.client.patch(path, headers=mine, json={"events": ["nope"]}),
                     400, "invalid_input", "events[0]")
        assert_error(api.client.post("/v1/webhooks/endpoints", headers=mine,
                                     json={"url": "ftp://example.com/hook"}),
                     400, "invalid_input", "url")

        deleted = api.client.delete(path, headers=mine)
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert_error(api.client.get(path, headers=mine), 404, "invalid_input", "endpoint_id")
        assert api.client.get("/v1/webhooks/endpoints", headers=mine).json()["data"] == []


def test_private_endpoint_urls_are_refused_without_allow_private_urls(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        headers = aixpose_key(api)
        for url in ("https://127.0.0.1/hook", "https://10.1.2.3/hook",
                    "https://169.254.169.254/latest"):
            assert_error(api.client.post("/v1/webhooks/endpoints", headers=headers,
                                         json={"url": url}), 400, "invalid_input", "url")
        assert api.client.get("/v1/webhooks/endpoints", headers=headers).json()["data"] == []


def test_an_endpoint_disabled_or_deleted_after_enqueueing_gets_nothing(services):
    with transaction(services.session_factory) as session:
        account_id = accounts.create_account(session, "hooks", plan="plus", credits=100).id
    with webhook_receiver() as receiver:
        with transaction(services.session_factory) as session:
            kept = webhook_endpoints.create_endpoint(session, account_id, receiver.url)
            paused = webhook_endpoints.create_endpoint(session, account_id, receiver.url)
            gone = webhook_endpoints.create_endpoint(session, account_id, receiver.url)
            webhook_outbox.enqueue_event(session, account_id, "picture.failed", PICTURE, None)
            ids = {e.id: e.secret for e in (kept, paused, gone)}
        with transaction(services.session_factory) as session:
            webhook_endpoints.update_endpoint(
                session, webhook_endpoints.get_endpoint(session, account_id, paused.id),
                {"enabled": False})
            webhook_endpoints.delete_endpoint(
                session, webhook_endpoints.get_endpoint(session, account_id, gone.id))
        assert webhook_outbox.deliver_due(services) == 3
        [post] = receiver.received
    assert Webhook(ids[kept.id]).verify(post.body, post.headers)["data"] == PICTURE
    with services.session_factory() as session:
        rows = {d.endpoint_id: d for d in session.scalars(select(WebhookDelivery))}
    assert rows[kept.id].status == "delivered"
    assert rows[paused.id].status == "failed" and "disabled" in rows[paused.id].last_error
    assert rows[gone.id].status == "failed" and "deleted" in rows[gone.id].last_error
