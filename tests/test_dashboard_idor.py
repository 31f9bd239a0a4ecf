"""Cross-account access on the dashboard: a signed-in member of account B (with a valid CSRF
token for each POST) opens every dashboard page and sends every dashboard form that takes an id,
with account A's ids. Each answer is not-found (404) and nothing stored changes, A's rows
included. SQLite + PostgreSQL.

The routes are read from `app.routes`: a new `/dashboard` or `/oauth` route with a path parameter
that is not in `ROUTES` (or in `EXEMPT`, with its reason) fails
`test_every_dashboard_route_with_an_id_is_in_the_table`.
"""

from __future__ import annotations

import re

from retouch.serving.app import build_app

from api_fixtures import app_routes
from dashboard_fixtures import owned_resources, stored_state, walk_api  # noqa: F401
from test_dashboard_pages import Dashboard

KEY_FORM = {"name": "taken over", "scopes": ["credits:read"], "tools": ["generator"]}
# (method, path as routed) -> (the id kind its first parameter takes, form fields, values of the
# other path parameters: each one is tried).
ROUTES = {
    ("GET", "/dashboard/keys/{key_id}/edit"): ("key", {}, {}),
    ("POST", "/dashboard/keys/{key_id}/edit"): ("key", KEY_FORM, {}),
    ("POST", "/dashboard/keys/{key_id}/{action}"): (
        "key", {}, {"action": ["pause", "resume", "revoke"]}),
    ("POST", "/dashboard/clients/{grant_id}/revoke"): ("grant", {}, {}),
    ("GET", "/dashboard/generations/{generation_id}/status"): ("generation", {}, {}),
    ("GET", "/dashboard/generations/{generation_id}/events"): ("generation", {}, {}),
    ("POST", "/dashboard/generations/{generation_id}/cancel"): ("generation", {}, {}),
    ("GET", "/dashboard/projects/{project_id}"): ("project", {}, {}),
    ("GET", "/dashboard/pictures/{picture_id}/lineage"): ("picture", {}, {}),
    ("POST", "/dashboard/pictures/{picture_id}/approve"): ("picture", {}, {}),
}
EXEMPT = {
    ("GET", "/dashboard/static/{name}"): "the app's own static files; no account data",
}
PREFIXES = ("/dashboard", "/oauth")
NOT_FOUND = re.compile(r"not found|does not exist")


def urls_for(path: str, own_id: str, others: dict[str, list[str]]) -> list[str]:
    """`path` with its first parameter set to `own_id`, once per value of each other one."""
    url = re.sub(r"\{\w+\}", own_id, path, count=1)
    urls = [url]
    for name, values in others.items():
        urls = [u.replace("{" + name + "}", value) for u in urls for value in values]
    return urls


def test_every_dashboard_route_with_an_id_is_in_the_table(walk_api):
    app = build_app(walk_api.services.settings, services=walk_api.services)
    routes = {r for r in app_routes(app.routes) if r[1].startswith(PREFIXES) and "{" in r[1]}
    missing = routes - set(ROUTES) - set(EXEMPT)
    assert not missing, f"add these routes to ROUTES (or EXEMPT with a reason): {missing}"
    assert set(ROUTES) <= routes, set(ROUTES) - routes  # no stale rows


def test_a_member_of_account_b_gets_not_found_for_account_a_s_ids(walk_api):
    owner = Dashboard(walk_api, email="a@example.com")
    ids_a = owned_resources(owner)
    intruder = Dashboard(walk_api, email="b@example.com")
    owned_resources(intruder)  # B has things of its own, so its pages are not empty
    intruder.sign_in()
    token = intruder.csrf()
    before = stored_state(walk_api)
    tried = 0
    for (method, path), (kind, form, others) in ROUTES.items():
        for url in urls_for(path, ids_a[kind], others):
            if method == "POST":
                response = intruder.client.post(url, data={"csrf_token": token, **form},
                                                follow_redirects=False)
            else:
                response = intruder.client.get(url, follow_redirects=False)
            assert response.status_code == 404, (method, url, response.status_code,
                                                 response.text[:300])
            assert NOT_FOUND.search(response.text), (method, url, response.text[:300])
            assert stored_state(walk_api) == before, (method, url)
            tried += 1
    # The consent form takes an authorization request id (form field `request`): A's finished
    # request is refused to B, page and form, and creates no grant.
    consent = intruder.client.get(f"/oauth/consent?request={ids_a['request']}")
    assert consent.status_code == 400 and "unknown, finished or expired" in consent.text
    decided = intruder.client.post("/oauth/consent", data={
        "request": ids_a["request"], "csrf_token": token, "decision": "approve",
        "scopes": "credits:read", "tools": "generator"}, follow_redirects=False)
    assert decided.status_code == 400 and "unknown, finished or expired" in decided.text
    assert stored_state(walk_api) == before
    assert tried == 12
