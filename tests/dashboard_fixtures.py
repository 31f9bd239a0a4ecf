"""Helpers for the dashboard walks (`test_dashboard_idor`, `test_dashboard_csrf`): everything
stored (database rows and files) as one comparable value, and an account holding one of each
thing a dashboard route takes an id of. The routes come from `api_fixtures.app_routes`."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from retouch.serving.core import keys, members
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import Base
from retouch.serving.mcp import grants

from api_fixtures import GENERATOR_BODY, api_for, image_bytes, make_settings
from db_fixtures import BACKENDS, postgres_schema
from test_dashboard_pages import Dashboard

CROSS_SITE = {"Origin": "https://evil.example"}
REDIRECT_URI = "http://127.0.0.1/callback"


def stored_state(api) -> dict[str, list[str]]:
    """Every row of every table and every stored file, as sorted lists of strings."""
    with api.services.session_factory() as session:
        state = {table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
                 for table in Base.metadata.sorted_tables}
    root = api.services.settings.home / "files"
    state["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*")) \
        if root.exists() else []
    return state


@pytest.fixture(params=BACKENDS)
def walk_api(request, tmp_path):
    """The test app (no executor: jobs stay `pending`) on SQLite, or PostgreSQL when set."""
    if request.param == "sqlite":
        with api_for(make_settings(tmp_path)) as api:
            yield api
        return
    with postgres_schema("test_dashboard_walk") as url, \
            api_for(make_settings(tmp_path, database_url=url)) as api:
        yield api


def authorization_request(api, client_id: str) -> str:
    """A pending MCP authorization request (what `/oauth/consent?request=` opens)."""
    with transaction(api.services.session_factory) as session:
        if grants.get_client(session, client_id) is None:
            grants.register_client(session, client_id, {"client_name": "Desk Assistant",
                                                        "redirect_uris": [REDIRECT_URI]}, None)
        return grants.create_authorization_request(session, client_id, {
            "redirect_uri": REDIRECT_URI, "state": "s", "code_challenge": "c" * 43,
            "scopes": ["credits:read"]})


def owned_resources(owner: Dashboard) -> dict[str, str]:
    """One of each thing a dashboard route takes an id of, in `owner`'s account: a key, a
    connected MCP client (grant), a pending generation, an AIXpose project and picture, and an
    authorization request the owner approved (so it is finished)."""
    api = owner.api
    key_id, secret = api.key(owner.account_id)
    generation = api.generate(secret, GENERATOR_BODY)
    assert generation.status_code == 201, generation.text
    with transaction(api.services.session_factory) as session:
        aixpose = keys.create_key(session, owner.account_id, surface="aixpose")[1]
    headers = {"Authorization": f"Bearer {aixpose}"}
    project = api.client.post("/v1/projects", headers=headers, json={"name": "Villa"}).json()
    picture = api.client.post(f"/v1/projects/{project['id']}/pictures", headers=headers, json={
        "source": {"type": "base64", "media_type": "image/png",
                   "data": base64.b64encode(image_bytes()).decode()},
        "scene_type": "interior"}).json()
    request_id = authorization_request(api, f"client-of-{owner.account_id}")
    with transaction(api.services.session_factory) as session:
        member = members.get_member_by_email(session, owner.email)
        signed_in, _ = members.start_session(session, member)
        grants.approve_authorization(session, request_id, signed_in,
                                     grants.GrantChoices(scopes=["credits:read"]))
        grant = grants.list_connected_clients(session, owner.account_id)[0].grant
    return {"key": key_id, "secret": secret, "grant": grant.id,
            "generation": generation.json()["generation"]["id"], "project": project["id"],
            "picture": picture["id"], "request": request_id}
