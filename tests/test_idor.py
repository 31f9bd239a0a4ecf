"""Cross-account access, one table: account B, with its own valid keys, asks for account A's
resources by id on every route of both surfaces that takes one (path, query or body) and on
every MCP tool that takes one. Each answer is the seed's not-found (`invalid_input`, 404, or 400
naming the field for a reference in a body), nothing of A's changes, nothing is charged, and A's
lists never show B's resources. SQLite + PostgreSQL.

The routes are read from `app.routes`: a new route with a path parameter that is not in `ROUTES`
(or in `EXEMPT`, with its reason) fails `test_every_route_with_an_id_is_in_the_table`.
"""

from __future__ import annotations

import asyncio
import base64
import re

import httpx
import pytest

from retouch.serving.core import keys
from retouch.serving.core.db import transaction
from retouch.serving.core.webhook_endpoints import create_endpoint
from retouch.serving.core.webhook_outbox import enqueue_event

from api_fixtures import GENERATOR_BODY, app_routes, image_bytes
from db_fixtures import BACKENDS, postgres_schema
from mcp_fixtures import mcp_session, serve_app, tool_error, tool_json

# (method, path as routed) -> (id kind the path takes, request extras). `{id}` is A's id.
ROUTES = {
    ("GET", "/api/v1/generations/{generation_id}"): ("generation", {}),
    ("GET", "/api/v1/generations/{generation_id}/events"): ("generation", {}),
    ("POST", "/api/v1/generations/{generation_id}/cancel"): ("generation", {}),
    ("GET", "/v1/projects/{project_id}"): ("project", {}),
    ("POST", "/v1/projects/{project_id}/publish"): ("project", {}),
    ("GET", "/v1/projects/{project_id}/media"): ("project", {}),
    ("GET", "/v1/projects/{project_id}/pictures"): ("project", {}),
    ("POST", "/v1/projects/{project_id}/pictures"): ("project", {"json": {
        "source": {"type": "base64", "media_type": "image/png",
                   "data": base64.b64encode(image_bytes()).decode()},
        "scene_type": "interior"}}),
    ("GET", "/v1/pictures/{picture_id}"): ("picture", {}),
    ("POST", "/v1/pictures/{picture_id}/enhancements"): ("picture", {"json": {
        "instruction": {"source": "custom", "prompt": "brighter"}}}),
    ("GET", "/v1/pictures/{picture_id}/lineage"): ("picture", {}),
    ("POST", "/v1/pictures/{picture_id}/feedback"): ("picture", {"json": {"rating": 1}}),
    ("POST", "/v1/pictures/{picture_id}/approve"): ("picture", {}),
    ("GET", "/v1/pictures/{picture_id}/events"): ("picture", {}),
    ("POST", "/v1/pictures/{picture_id}/cancel"): ("picture", {}),
    ("GET", "/v1/videos/{video_id}"): ("video", {}),
    ("GET", "/v1/videos/{video_id}/events"): ("video", {}),
    ("POST", "/v1/videos/{video_id}/cancel"): ("video", {}),
    ("GET", "/v1/webhooks/deliveries/{delivery_id}"): ("delivery", {}),
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/redeliver"): ("delivery", {}),
    ("GET", "/v1/webhooks/endpoints/{endpoint_id}"): ("endpoint", {}),
    ("PATCH", "/v1/webhooks/endpoints/{endpoint_id}"): ("endpoint", {"json": {"enabled": False}}),
    ("DELETE", "/v1/webhooks/endpoints/{endpoint_id}"): ("endpoint", {}),
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}/secret/rotate"): ("endpoint", {}),
    ("GET", "/v1/webhooks/endpoints/{endpoint_id}/deliveries"): ("endpoint", {}),
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver"): (
        "endpoint", {}),
}
# Ids in a query or a body: (method, path, request extras with "{kind}" placeholders, field).
REFERENCES = [
    ("GET", "/v1/videos", {"params": {"project_id": "{project}"}}, "project_id"),
    ("POST", "/v1/videos", {"json": {"project_id": "{project}"}}, "project_id"),
    ("POST", "/api/v1/generations", {"json": {"tool": "upscaler", "input": {
        "image": {"upload_id": "{upload}"}}}}, "input.image"),
    ("POST", "/api/v1/generations", {"json": {"tool": "upscaler", "input": {
        "image": {"generation_id": "{generation}"}}}}, "input.image"),
    ("POST", "/v1/pictures/{picture}/enhancements", {"json": {"instruction": {
        "source": "quick_action", "quick_action_id": "{quick_action}"}}},
     "instruction.quick_action_id"),
    ("POST", "/v1/pictures/{picture}/enhancements", {"json": {"instruction": {
        "source": "custom", "prompt": "brighter", "consistent_with": "{picture}"}}},
     "instruction.consistent_with"),
]
EXEMPT = {
    ("GET", "/files/{key:path}"): "storage keys are unguessable UUID paths (capability URLs), "
                                  "as the seed's public output URLs are",
}
EXEMPT_PREFIXES = {
    "/dashboard/": "member-session pages, walked by tests/test_dashboard_idor.py",
}
# MCP tools that take an id: (tool, arguments with placeholders).
MCP_CALLS = [
    ("wixma_get_generation", {"generation_id": "{generation}"}),
    ("wixma_cancel_generation", {"generation_id": "{generation}"}),
    ("wixma_upscale_image", {"image": {"upload_id": "{upload}"}}),
    ("wixma_upscale_image", {"image": {"generation_id": "{generation}"}}),
    ("wixma_edit_image", {"images": [{"upload_id": "{upload}"}], "prompt": "x"}),
    ("wixma_photographer", {"mode": "cloth_change", "main_image": {"upload_id": "{upload}"},
                            "text_prompt": "a suit"}),
    ("wixma_ai_filter", {"filter": "noir-bw", "image": {"generation_id": "{generation}"}}),
]


def fill(value, ids: dict):
    if isinstance(value, str):
        for kind, resource_id in ids.items():
            value = value.replace("{" + kind + "}", resource_id)
        return value
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


def routes_with_ids(routes):
    """(method, path) of every route whose path has a parameter, included routers expanded."""
    return {(method, path) for method, path in app_routes(routes) if "{" in path}


class Account:
    def __init__(self, app, client):
        self.client = client
        self.id = app.account(plan="pro", credits=100_000)
        with transaction(app.services.session_factory) as session:
            self.wixma = keys.create_key(session, self.id)[1]
            self.aixpose = keys.create_key(session, self.id, surface="aixpose")[1]

    def call(self, method, path, **kwargs):
        secret = self.wixma if path.startswith("/api/v1") else self.aixpose
        return self.client.request(method, path, headers={"Authorization": f"Bearer {secret}"},
                                   timeout=30, **kwargs)

    def ok(self, method, path, **kwargs) -> dict:
        response = self.call(method, path, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def resources(self, app) -> dict[str, str]:
        upload = self.ok("POST", "/api/v1/uploads",
                         files={"file": ("a.png", image_bytes(), "image/png")})["upload"]
        generation = self.ok("POST", "/api/v1/generations", json=GENERATOR_BODY)["generation"]
        project = self.ok("POST", "/v1/projects", json={"name": "mine"})
        picture = self.ok("POST", f"/v1/projects/{project['id']}/pictures",
                          json=ROUTES[("POST", "/v1/projects/{project_id}/pictures")][1]["json"])
        self.ok("POST", f"/v1/pictures/{picture['id']}/approve")
        video = self.ok("POST", "/v1/videos", json={"project_id": project["id"], "duration": 5})
        quick = self.ok("POST", "/v1/quick-actions", json={"name": "q", "instruction": {
            "prompt": "brighter"}})
        with transaction(app.services.session_factory) as session:
            endpoint = create_endpoint(session, self.id, "https://hooks.example/endpoint").id
            delivery = enqueue_event(session, self.id, "picture.completed", {"id": picture["id"]},
                                     "https://hooks.example/aixpose").id
        return {"upload": upload["id"], "generation": generation["id"], "project": project["id"],
                "picture": picture["id"], "video": video["id"], "delivery": delivery,
                "endpoint": endpoint,
                "quick_action": quick["id"]}

    def snapshot(self, ids: dict) -> dict:
        """What A can see of its resources and credits (volatile delivery attempts aside)."""
        return {
            "generation": self.ok("GET", f"/api/v1/generations/{ids['generation']}"),
            "project": self.ok("GET", f"/v1/projects/{ids['project']}"),
            "pictures": self.ok("GET", f"/v1/projects/{ids['project']}/pictures")["data"],
            "video": self.ok("GET", f"/v1/videos/{ids['video']}"),
            "endpoint": self.ok("GET", f"/v1/webhooks/endpoints/{ids['endpoint']}"),
            "credits": self.ok("GET", "/api/v1/credits")["credits"]["balance"],
            "generations": [g["id"] for g in self.ok("GET", "/api/v1/generations")["data"]],
        }


def strip_request_ids(value):
    if isinstance(value, dict):
        return {k: strip_request_ids(v) for k, v in value.items() if k != "request_id"}
    if isinstance(value, list):
        return [strip_request_ids(v) for v in value]
    return value


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"idor-{request.param}")
    if request.param == "sqlite":
        with serve_app(home) as app:
            yield app
        return
    with postgres_schema("test_idor") as url, serve_app(home, database_url=url) as app:
        yield app


@pytest.fixture(scope="module")
def world(served):
    client = httpx.Client(base_url=served.base_url)
    a, b = Account(served, client), Account(served, client)
    ids_a, ids_b = a.resources(served), b.resources(served)
    yield served, a, b, ids_a, ids_b
    client.close()


def assert_not_found(response, *fields: str):
    assert response.status_code in (400, 404), response.text
    body = response.json()
    assert body["object"] == "error" and body["error"]["code"] == "invalid_input", body
    assert body["request_id"].startswith("req_")
    if fields:
        assert body["error"]["details"]["field"] in fields, body


def test_every_route_with_an_id_is_in_the_table(served):
    from retouch.serving.app import build_app

    routes = set(routes_with_ids(build_app(served.services.settings,
                                           services=served.services).routes))
    missing = {r for r in routes if r not in ROUTES and r not in EXEMPT
               and not r[1].startswith(tuple(EXEMPT_PREFIXES))}
    assert not missing, f"add these routes to ROUTES (or EXEMPT with a reason): {missing}"
    assert set(ROUTES) <= routes, set(ROUTES) - routes  # no stale rows


def test_account_b_cannot_reach_account_a_s_resources(world):
    served, a, b, ids_a, ids_b = world
    before_a, before_b = a.snapshot(ids_a), b.snapshot(ids_b)
    tried = 0
    for (method, path), (kind, extras) in ROUTES.items():
        url = path.replace(path[path.index("{"):path.index("}") + 1], ids_a[kind])
        url = re.sub(r"\{(\w+)_id\}", lambda m: ids_b[m.group(1)], url)  # the rest: B's own
        response = b.call(method, url, **fill(extras, ids_b))
        assert response.status_code == 404, (method, path, response.text)
        assert_not_found(response, f"{kind}_id", "id")  # Wixma names a generation `id`
        tried += 1
    for method, path, extras, field in REFERENCES:
        path = fill(path, ids_b)
        assert_not_found(b.call(method, path, **fill(extras, ids_a)), field)
        tried += 1
    assert strip_request_ids(a.snapshot(ids_a)) == strip_request_ids(before_a)
    assert strip_request_ids(b.snapshot(ids_b)) == strip_request_ids(before_b)
    delivery = a.ok("GET", f"/v1/webhooks/deliveries/{ids_a['delivery']}")
    assert delivery["id"] == ids_a["delivery"]
    assert tried == len(ROUTES) + len(REFERENCES)


def test_lists_show_only_the_account_s_own_resources(world):
    _, a, b, ids_a, ids_b = world
    for account, own, other in ((a, ids_a, ids_b), (b, ids_b, ids_a)):
        listed = {
            "generation": [g["id"] for g in account.ok("GET", "/api/v1/generations")["data"]],
            "project": [p["id"] for p in account.ok("GET", "/v1/projects")["data"]],
            "video": [v["id"] for v in account.ok("GET", "/v1/videos")["data"]],
            "delivery": [d["id"] for d in account.ok("GET", "/v1/webhooks/deliveries")["data"]],
            "quick_action": [q["id"] for q in account.ok("GET", "/v1/quick-actions")["data"]],
        }
        for kind, found in listed.items():
            assert own[kind] in found, (kind, found)
            assert other[kind] not in found, (kind, found)
        pictures = account.ok("GET", f"/v1/projects/{own['project']}/pictures")["data"]
        assert [p["id"] for p in pictures] == [own["picture"]]
        ledger = account.ok("GET", "/v1/credits/ledger")["data"]
        assert other["generation"] not in {e["job_id"] for e in ledger}


def test_mcp_tools_refuse_account_a_s_ids(world):
    served, a, b, ids_a, ids_b = world
    before = a.snapshot(ids_a)

    async def scenario():
        async with mcp_session(served.mcp_url, b.wixma) as session:
            tools = (await session.list_tools()).tools
            taking_ids = {t.name for t in tools
                          if "upload_id" in str(t.input_schema) or "generation_id" in
                          str(t.input_schema)}
            assert taking_ids == {name for name, _ in MCP_CALLS}, taking_ids
            for name, arguments in MCP_CALLS:
                error = tool_error(await session.call_tool(name, fill(arguments, ids_a)))
                assert error["code"] == "invalid_input", (name, error)
            listed = tool_json(await session.call_tool("wixma_list_generations", {}))
            assert ids_a["generation"] not in {g["id"] for g in listed["data"]}

    asyncio.run(scenario())
    assert strip_request_ids(a.snapshot(ids_a)) == strip_request_ids(before)
