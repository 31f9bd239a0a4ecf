"""AIXpose response models: every JSON route under `/v1` has one (and its idempotent replay is
documented with it), and a walk over every route with real objects of one account (completed
pictures with feedback and lineage, a video, a publish, quick actions, webhook endpoints and
deliveries with attempts, branding) answers bodies its model leaves unchanged and fully declares
(`response_audit`, which also checks these bodies in every other test). SQLite + PostgreSQL.
"""

from __future__ import annotations

import base64

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from retouch.serving.aixpose import responses
from retouch.serving.core import keys, webhook_outbox
from retouch.serving.core.db import transaction

from api_fixtures import api_for, finish_next_job, image_bytes, leaf_routes, make_settings
from db_fixtures import BACKENDS, postgres_schema
from response_audit import audit_body

MEDIA_ROUTE = "GET /v1/projects/{project_id}/media"  # a JSONResponse (for its ETag)


class PendingJobs:
    """An executor that runs nothing: jobs wait for `finish_next_job`."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def available(self) -> bool:
        return True


def aixpose_routes(routes) -> dict[str, APIRoute]:
    """"METHOD /v1/path" -> route, included routers expanded (their routes under the prefix)."""
    return {f"{method} {route.path}": route for route in leaf_routes(routes)
            if getattr(route, "path", "").startswith("/v1/") for method in route.methods}


def documented_model(route) -> type[BaseModel] | None:
    """The route's response model, or the 200 model of `responses=` (the media JSONResponse)."""
    return route.response_model or route.original_route.responses.get(200, {}).get("model")


def test_every_json_route_has_a_response_model_and_documents_its_replay(api):
    routes = aixpose_routes(api.client.app.routes)
    event_streams = {name for name, route in routes.items() if name.endswith("/events")}
    assert len(event_streams) == 2 and len(routes) > 40
    for name, route in routes.items():
        if name in event_streams:
            continue
        model = documented_model(route)
        assert isinstance(model, type) and model.__module__ == responses.__name__, name
        replayable = any(p.alias == "Idempotency-Key" for p in route.dependant.header_params)
        if route.status_code in (201, 202) and replayable:
            assert route.original_route.responses[200]["model"] is model, \
                f"{name}: its idempotent replay (200) is undocumented"


def test_the_audit_finds_undeclared_dropped_and_retyped_keys():
    picture = {"id": "pic_1", "object": "picture", "project_id": "prj_1",
               "status": "completed", "progress": 1.0, "public_url": None, "version": 0,
               "subversion": 0, "scene_type": "interior", "scene_location": None,
               "source_instruction": {"source": "preset", "actions": ["a"]}, "parent_id": None,
               "approved": False, "feedback": None, "media_type": None, "error_code": None,
               "seed": None, "model_revision": None, "created_at": "2026-01-01T00:00:00.000Z"}
    listed = {"object": "list", "data": [picture], "has_more": False, "next_cursor": None}
    model = responses.PictureList
    sent = model.model_validate(listed).model_dump(mode="json")
    assert audit_body("GET x", model, listed, sent) == []

    extra = {**listed, "data": [{**picture, "source_instruction": {"source": "x", "new": 1}}]}
    assert audit_body("GET x", model, extra, extra) == \
        ["GET x: undeclared key body.data[0].source_instruction.new"]
    dropped = {**listed, "data": [{k: v for k, v in picture.items() if k != "seed"}]}
    retyped = {**listed, "data": [{**picture, "progress": 1}]}
    for body in (dropped, retyped):
        [finding] = audit_body("GET x", model, body, sent)
        assert "changed by its response model" in finding


@pytest.fixture(params=BACKENDS)
def walk_api(request, tmp_path):
    settings = dict(allow_private_urls=True)
    if request.param == "sqlite":
        with api_for(make_settings(tmp_path, **settings), executor=PendingJobs()) as api:
            yield api
        return
    with postgres_schema("test_responses") as url, api_for(
            make_settings(tmp_path, database_url=url, **settings), executor=PendingJobs()) as api:
        yield api


def test_every_route_answers_real_objects_as_its_model_says(walk_api, aixpose_response_audit):
    api = walk_api
    account_id = api.account(plan="pro", credits=10**6)
    with transaction(api.services.session_factory) as session:
        secret = keys.create_key(session, account_id, surface="aixpose")[1]
    headers = {"Authorization": f"Bearer {secret}"}
    png = {"type": "base64", "media_type": "image/png",
           "data": base64.b64encode(image_bytes()).decode()}
    hook = "http://127.0.0.1:9/hook"

    def call(method: str, path: str, body=None, status: int = 200, key: str | None = None):
        extra = {"Idempotency-Key": key} if key else {}
        response = api.client.request(method, path, json=body, headers={**headers, **extra})
        assert response.status_code == status, f"{method} {path}: {response.text}"
        return response.json()

    call("PATCH", "/v1/organization", {"name": "Agency", "branding": {
        "enabled": True, "logo": png, "opacity": 1, "scale": 0.5},
        "default_output": {"output": "video"}})
    call("GET", "/v1/organization")
    call("PATCH", "/v1/agent", {"enabled": True, "preferences": {"interior": []}})
    quick = call("POST", "/v1/quick-actions", {"name": "q", "instruction": {"prompt": "warm"}},
                 201, key="qa")
    call("POST", "/v1/quick-actions", {"name": "q", "instruction": {"prompt": "warm"}}, key="qa")
    call("GET", "/v1/quick-actions")
    endpoint = call("POST", "/v1/webhooks/endpoints", {"url": hook}, 201, key="ep")
    call("POST", "/v1/webhooks/endpoints", {"url": hook}, key="ep")
    endpoint_path = f"/v1/webhooks/endpoints/{endpoint['id']}"

    project = call("POST", "/v1/projects", {"name": "p", "output": "picture"}, 201, key="p")
    call("POST", "/v1/projects", {"name": "p", "output": "picture"}, key="p")
    original = call("POST", f"/v1/projects/{project['id']}/pictures",
                    {"source": png, "scene_type": "interior", "webhook_url": hook}, 201)
    variants = call("POST", f"/v1/pictures/{original['id']}/enhancements",
                    {"instruction": {"source": "quick_action", "quick_action_id": quick["id"]},
                     "variants": 2}, 201, key="e")
    call("POST", f"/v1/pictures/{original['id']}/enhancements",
         {"instruction": {"source": "quick_action", "quick_action_id": quick["id"]},
          "variants": 2}, key="e")
    finish_next_job(api, [image_bytes(16, 16), image_bytes(16, 16)])
    picture_id = variants["data"][0]["id"]
    call("POST", f"/v1/pictures/{picture_id}/feedback", {"rating": 5, "comment": "good"})
    call("POST", f"/v1/pictures/{picture_id}/approve")
    call("GET", f"/v1/pictures/{picture_id}")
    call("GET", f"/v1/pictures/{picture_id}/lineage")
    call("GET", f"/v1/projects/{project['id']}/pictures")
    pending = call("POST", f"/v1/pictures/{original['id']}/enhancements",
                   {"instruction": {"source": "preset", "actions": ["light-bright-natural"]}},
                   201)
    call("POST", f"/v1/pictures/{pending['data'][0]['id']}/cancel")

    video = call("POST", "/v1/videos", {"project_id": project["id"], "duration": 5,
                                        "webhook_url": hook}, 201, key="v")
    call("POST", "/v1/videos", {"project_id": project["id"], "duration": 5,
                                "webhook_url": hook}, key="v")
    finish_next_job(api)
    call("GET", f"/v1/videos/{video['id']}")
    call("GET", f"/v1/videos?project_id={project['id']}")
    other = call("POST", "/v1/videos", {"project_id": project["id"], "duration": 5}, 201)
    call("POST", f"/v1/videos/{other['id']}/cancel")

    call("POST", f"/v1/projects/{project['id']}/publish")
    call("GET", f"/v1/projects/{project['id']}")
    call("GET", "/v1/projects")
    media = call("GET", f"/v1/projects/{project['id']}/media")
    assert {m["type"] for m in media["data"]} == {"picture", "video"}
    assert audit_body(MEDIA_ROUTE, responses.PublishedMediaList, media, media) == []

    for path in ("/v1/catalog/models", "/v1/catalog/actions", "/v1/catalog/aspect-ratios",
                 "/v1/catalog/output-formats", "/v1/agent", "/v1/credits/balance",
                 "/v1/credits/ledger", "/v1/webhooks/secret", "/v1/webhooks/endpoints",
                 endpoint_path):
        call("GET", path)
    call("POST", "/v1/webhooks/secret/rotate")
    webhook_outbox.deliver_due(api.services, transport=httpx.MockTransport(
        lambda request: httpx.Response(500)))
    deliveries = call("GET", "/v1/webhooks/deliveries")
    assert any(d["attempts"] for d in deliveries["data"])
    delivery_id = next(d["id"] for d in deliveries["data"] if d["endpoint_id"])
    call("GET", f"/v1/webhooks/deliveries/{delivery_id}")
    call("POST", f"/v1/webhooks/deliveries/{delivery_id}/redeliver", status=202, key="r")
    call("POST", f"/v1/webhooks/deliveries/{delivery_id}/redeliver", key="r")
    call("GET", f"{endpoint_path}/deliveries")
    call("POST", f"{endpoint_path}/deliveries/{delivery_id}/redeliver", status=202)
    call("PATCH", endpoint_path, {"description": "d", "events": ["picture.completed"]})
    call("POST", f"{endpoint_path}/secret/rotate")
    call("DELETE", endpoint_path)

    audited = aixpose_response_audit.routes | {MEDIA_ROUTE}
    json_routes = {name for name in aixpose_routes(api.client.app.routes) if "/events" not in name}
    assert json_routes - audited == set()
    assert aixpose_response_audit.findings == []
