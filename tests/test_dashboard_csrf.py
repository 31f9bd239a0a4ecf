"""CSRF walk: every state-changing form under `/dashboard` and `/oauth` (read from `app.routes`,
sign-in, sign-out and the MCP consent form included) refuses (a) no token, (b) a wrong token and
(c) the right token sent from another site, and nothing stored changes; the same form with the
right token from this site does change something, so the refusals are the CSRF checks' doing.
SQLite + PostgreSQL.

A new state-changing route that is not in `FORMS` (or `EXEMPT`, with its reason) fails
`test_every_state_changing_dashboard_route_is_in_the_table`.
"""

from __future__ import annotations

from retouch.serving.app import build_app

from api_fixtures import app_routes
from dashboard_fixtures import (CROSS_SITE, authorization_request, owned_resources,  # noqa: F401
                                stored_state, walk_api)
from test_dashboard_pages import PASSWORD, Dashboard, csrf_token_of

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
PREFIXES = ("/dashboard", "/oauth")
KEY_FORM = {"name": "new", "scopes": ["credits:read"], "tools": ["generator"]}

# (method, path as routed) -> (the URL and form fields of a valid request) for a signed-in
# member `page` whose account holds `ids` (`owned_resources`).
FORMS = {
    ("POST", "/dashboard/login"): lambda page, ids: (
        "/dashboard/login", {"email": page.email, "password": PASSWORD, "next": "/dashboard"}),
    ("POST", "/dashboard/keys"): lambda page, ids: (
        "/dashboard/keys", KEY_FORM),
    ("POST", "/dashboard/keys/{key_id}/edit"): lambda page, ids: (
        f"/dashboard/keys/{ids['key']}/edit", {**KEY_FORM, "name": "renamed"}),
    ("POST", "/dashboard/keys/{key_id}/{action}"): lambda page, ids: (
        f"/dashboard/keys/{ids['key']}/pause", {}),
    ("POST", "/dashboard/clients/{grant_id}/revoke"): lambda page, ids: (
        f"/dashboard/clients/{ids['grant']}/revoke", {}),
    ("POST", "/dashboard/generations"): lambda page, ids: (
        "/dashboard/generations", {"tool": "generator", "prompt": "a lamp", "quality": "low"}),
    ("POST", "/dashboard/generations/{generation_id}/cancel"): lambda page, ids: (
        f"/dashboard/generations/{ids['generation']}/cancel", {}),
    ("POST", "/dashboard/pictures/{picture_id}/approve"): lambda page, ids: (
        f"/dashboard/pictures/{ids['picture']}/approve", {}),
    ("POST", "/oauth/consent"): lambda page, ids: (
        "/oauth/consent", {"request": authorization_request(page.api, "walk-client"),
                           "decision": "approve", "scopes": "credits:read",
                           "tools": "generator"}),
    ("POST", "/dashboard/logout"): lambda page, ids: ("/dashboard/logout", {}),
}
EXEMPT = {
    ("POST", "/oauth/authorize"): "OAuth authorization endpoint: no cookie is read; it only "
                                  "records a pending request and redirects to the consent form",
    ("POST", "/oauth/token"): "OAuth client endpoint: client credentials, no cookie",
    ("POST", "/oauth/register"): "OAuth dynamic registration: public by design, no cookie",
    ("POST", "/oauth/revoke"): "OAuth token revocation: client credentials, no cookie",
}


def right_token(page: Dashboard, path: str) -> str:
    """The token the form would carry: the sign-in form's cookie token, else the session's."""
    if path == "/dashboard/login":
        return csrf_token_of(page.client.get("/dashboard/login").text)
    return page.csrf()


def test_every_state_changing_dashboard_route_is_in_the_table(walk_api):
    app = build_app(walk_api.services.settings, services=walk_api.services)
    routes = {(m, p) for m, p in app_routes(app.routes)
              if m in STATE_CHANGING and p.startswith(PREFIXES)}
    missing = routes - set(FORMS) - set(EXEMPT)
    assert not missing, f"add these routes to FORMS (or EXEMPT with a reason): {missing}"
    assert set(FORMS) <= routes, set(FORMS) - routes  # no stale rows


def test_each_form_refuses_a_missing_wrong_or_cross_site_token(walk_api):
    page = Dashboard(walk_api)
    ids = owned_resources(page)
    page.sign_in()
    refused = 0
    for (method, path), valid_request in FORMS.items():
        url, fields = valid_request(page, ids)
        before = stored_state(walk_api)
        for attempt in ("none", "wrong", "cross-site"):
            token = right_token(page, path)  # a refused sign-in form rotates its token
            data = {**fields, **({"csrf_token": token[:-2] + "xx"} if attempt == "wrong" else
                                 {"csrf_token": token} if attempt == "cross-site" else {})}
            headers = CROSS_SITE if attempt == "cross-site" else {}
            response = page.client.request(method, url, data=data, headers=headers,
                                           follow_redirects=False)
            assert response.status_code in (400, 403), (url, attempt, response.status_code)
            assert "retouch_session" not in response.cookies, url  # no sign-in either
            assert stored_state(walk_api) == before, (url, attempt)
            refused += 1
        done = page.client.request(method, url, data={
            **fields, "csrf_token": right_token(page, path)}, follow_redirects=False)
        assert done.status_code in (200, 303), (url, done.status_code, done.text[:300])
        assert stored_state(walk_api) != before, url  # the valid form does change something
        if path == "/dashboard/logout":
            page.sign_in()
    assert refused == 3 * len(FORMS)
