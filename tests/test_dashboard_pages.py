"""Dashboard pages over HTTP: sign-in required, CSRF checks, API key settings (secret shown once,
pause/resume/revoke seen by the API), connected MCP clients, usage, and the playground."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from retouch.serving.core import keys, members
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import ApiKey, Generation, Upload

from api_fixtures import (GENERATOR_BODY, api_for, assert_error, finish_next_job, image_bytes,
                          make_settings)

PASSWORD = "correct horse battery"
CSRF_FIELD = re.compile(r"""name=["']?csrf_token["']? value=["']?([^"'\s>]+)""")


def csrf_token_of(html: str) -> str:
    return CSRF_FIELD.search(html).group(1)


class Dashboard:
    """A signed-in browser session on the test app."""

    def __init__(self, api, email: str = "owner@example.com", plan: str = "plus",
                 credits: int = 10_000):
        self.api, self.client = api, api.client
        self.account_id = api.account(plan=plan, credits=credits)
        with transaction(api.services.session_factory) as session:
            members.create_member(session, self.account_id, email, PASSWORD)
        self.email = email

    def sign_in(self) -> None:
        form = self.client.get("/dashboard/login")
        response = self.client.post("/dashboard/login", data={
            "email": self.email, "password": PASSWORD, "csrf_token": csrf_token_of(form.text),
            "next": "/dashboard/keys"}, follow_redirects=False)
        assert response.status_code == 303, response.text

    def csrf(self, path: str = "/dashboard/keys") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        return csrf_token_of(page.text)

    def post(self, path: str, data: dict | None = None, **kwargs):
        return self.client.post(path, data={"csrf_token": self.csrf(), **(data or {})},
                                follow_redirects=False, **kwargs)

    def create_key(self, **fields) -> tuple[str, str, str]:
        """(key_id, secret, page html) from the create-key form."""
        response = self.post("/dashboard/keys", fields)
        assert response.status_code == 200, response.text
        match = re.search(r'id="new-key-secret" data-key-id="([^"]+)">([^<]+)<', response.text)
        return match.group(1), match.group(2), response.text

    def keys(self) -> dict[str, ApiKey]:
        with self.api.services.session_factory() as session:
            return {k.id: k for k in keys.list_keys(session, self.account_id)}


@pytest.fixture
def dashboard(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        page = Dashboard(api)
        page.sign_in()
        yield page


def credits_call(api, secret: str):
    return api.client.get("/api/v1/credits", headers=api.headers(secret))


def test_pages_need_a_signed_in_member(api):
    for path in ("/dashboard/keys", "/dashboard/usage", "/dashboard/generations"):
        response = api.client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/dashboard/login?next=")
        assert path.replace("/", "%2F") in response.headers["location"]
    status = api.client.get("/dashboard/generations/abc/status",
                            headers={"Accept": "application/json"})
    assert_error(status, 401, "unauthorized")
    account_id = api.account()
    response = api.client.post("/dashboard/keys", data={"name": "x", "csrf_token": "t"},
                               follow_redirects=False)
    assert response.status_code == 303
    with api.services.session_factory() as session:
        assert keys.list_keys(session, account_id) == []
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_sign_in_needs_the_form_token_and_the_right_password(api):
    page = Dashboard(api)
    good = {"email": page.email, "password": PASSWORD, "next": "/dashboard/usage"}
    token = csrf_token_of(api.client.get("/dashboard/login").text)
    for sent in ({**good}, {**good, "csrf_token": "wrong" + token}):
        refused = api.client.post("/dashboard/login", data=sent, follow_redirects=False)
        assert refused.status_code == 400 and "retouch_session" not in refused.cookies
    token = csrf_token_of(api.client.get("/dashboard/login").text)  # the form's current token
    wrong = api.client.post("/dashboard/login", data={**good, "password": "not-it-at-all",
                                                      "csrf_token": token},
                            follow_redirects=False)
    assert wrong.status_code == 401 and "retouch_session" not in wrong.cookies
    signed_in = api.client.post("/dashboard/login", data={**good, "csrf_token": token},
                                follow_redirects=False)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard/usage"
    cookie = signed_in.headers["set-cookie"].lower()
    assert "retouch_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert api.client.get("/dashboard/usage").status_code == 200

    signed_out = page.post("/dashboard/logout")
    assert signed_out.status_code == 303
    assert api.client.get("/dashboard/keys", follow_redirects=False).status_code == 303


def test_forms_refuse_a_missing_wrong_or_cross_site_token(dashboard):
    token = dashboard.csrf()
    attempts = [({"name": "a"}, {}), ({"name": "a", "csrf_token": token[:-2] + "xx"}, {}),
                ({"name": "a", "csrf_token": token}, {"Origin": "https://evil.example"})]
    for data, headers in attempts:
        response = dashboard.client.post("/dashboard/keys", data=data, headers=headers,
                                         follow_redirects=False)
        assert response.status_code == 403, response.text
        assert "security token" in response.text or "another site" in response.text
    assert dashboard.keys() == {}
    key_id, secret = dashboard.api.key(dashboard.account_id)
    refused = dashboard.client.post(f"/dashboard/keys/{key_id}/revoke", data={},
                                    follow_redirects=False)
    assert refused.status_code == 403
    assert credits_call(dashboard.api, secret).status_code == 200


def test_create_key_shows_the_secret_once_with_its_settings(dashboard):
    key_id, secret, html = dashboard.create_key(
        name="ci server", scopes=["generations:create", "credits:read"],
        tools=["generator", "upscaler"], monthly_budget="500", total_budget="2000",
        per_request_limit="120", rate_limit_per_minute="30", expires_at="2099-01-31")
    assert secret.startswith("wx_live_") and "Copy" in html and 'data-copy="#new-key-secret"' in html
    key = dashboard.keys()[key_id]
    assert key.secret_hash == keys.hash_secret(secret) and key.name == "ci server"
    assert key.scopes == ["generations:create", "credits:read"]
    assert key.allowed_tools == ["generator", "upscaler"]
    assert (key.monthly_budget, key.total_budget, key.per_request_limit,
            key.rate_limit_per_minute) == (500, 2000, 120, 30)
    assert key.expires_at.isoformat().startswith("2099-01-31T00:00:00")

    listing = dashboard.client.get("/dashboard/keys").text
    assert secret not in listing and key.prefix in listing and "generator, upscaler" in listing

    used = credits_call(dashboard.api, secret)
    assert used.status_code == 200, used.text
    budgets = used.json()["credits"]["key"]
    assert budgets["monthly"]["limit"] == 500 and budgets["total"]["limit"] == 2000
    assert used.headers["RateLimit-Limit"] == "30"
    # The key's scopes hold: no generations:read.
    assert_error(dashboard.client.get("/api/v1/generations", headers=dashboard.api.headers(secret)),
                 403, "forbidden")
    # Every tool ticked stores "all tools".
    all_id, _, _ = dashboard.create_key(name="all", scopes=list(keys.WIXMA_SCOPES),
                                        tools=["generator", "editor", "photographer", "upscaler",
                                               "ai_filter"])
    assert dashboard.keys()[all_id].allowed_tools is None


INVALID_KEY_FORMS = [
    ({"monthly_budget": "lots"}, "monthly_budget"),
    ({"rate_limit_per_minute": "0"}, "rate_limit_per_minute"),
    ({"expires_at": "2001-01-01"}, "expires_at"),
    ({"scopes": []}, "scopes"),
    ({"tools": ["generator", "teleporter"]}, "tools"),
    ({"name": "Dashboard playground"}, "name"),
]


def test_an_invalid_key_form_names_the_field_and_creates_nothing(dashboard):
    for fields, field in INVALID_KEY_FORMS:
        data = {"name": "k", "scopes": ["credits:read"], "tools": ["generator"], **fields}
        response = dashboard.post("/dashboard/keys", data)
        assert response.status_code == 400, fields
        assert re.search(rf'id="error">{field}\b', response.text), response.text
        assert "new-key-secret" not in response.text
    assert dashboard.keys() == {}


def test_pause_resume_and_revoke_are_seen_by_the_api(dashboard):
    key_id, secret, _ = dashboard.create_key(name="k", scopes=list(keys.WIXMA_SCOPES),
                                             tools=["generator"])
    api = dashboard.api
    assert dashboard.post(f"/dashboard/keys/{key_id}/pause").status_code == 303
    paused = assert_error(credits_call(api, secret), 403, "forbidden")
    assert paused["details"]["reason"] == "paused"
    assert 'data-status="paused"' in dashboard.client.get("/dashboard/keys").text

    assert dashboard.post(f"/dashboard/keys/{key_id}/resume").status_code == 303
    assert credits_call(api, secret).status_code == 200

    assert dashboard.post(f"/dashboard/keys/{key_id}/revoke").status_code == 303
    revoked = assert_error(credits_call(api, secret), 403, "forbidden")
    assert revoked["details"]["reason"] == "revoked"
    again = dashboard.post(f"/dashboard/keys/{key_id}/resume")
    assert again.status_code == 400 and "cannot be re-enabled" in again.text
    assert dashboard.keys()[key_id].status == "revoked"


def test_another_accounts_key_cannot_be_changed(dashboard):
    other_key, other_secret = dashboard.api.key()  # a key of a different account
    response = dashboard.post(f"/dashboard/keys/{other_key}/revoke")
    assert response.status_code == 404 and "does not exist" in response.text
    assert credits_call(dashboard.api, other_secret).status_code == 200
    assert other_key not in dashboard.client.get("/dashboard/keys").text


def test_connected_mcp_clients_are_listed_and_can_be_disconnected(dashboard):
    from retouch.serving.mcp import grants

    services = dashboard.api.services
    with transaction(services.session_factory) as session:
        grants.register_client(session, "client-1", {"client_name": "Desk Assistant",
                                                     "redirect_uris": ["http://127.0.0.1/cb"]},
                               None)
        request_id = grants.create_authorization_request(session, "client-1", {
            "redirect_uri": "http://127.0.0.1/cb", "state": "s", "code_challenge": "c" * 43,
            "scopes": ["generations:read", "credits:read"]})
        member = members.get_member_by_email(session, dashboard.email)
        signed_in, _ = members.start_session(session, member)
        grants.approve_authorization(session, request_id, signed_in,
                                     grants.GrantChoices(scopes=["credits:read"]))
        grant = grants.list_connected_clients(session, dashboard.account_id)[0].grant
    page = dashboard.client.get("/dashboard/keys").text
    assert "Desk Assistant" in page and f"client-{grant.id}" in page

    assert dashboard.post(f"/dashboard/clients/{grant.id}/revoke").status_code == 303
    with services.session_factory() as session:
        assert grants.list_connected_clients(session, dashboard.account_id) == []
        assert session.get(ApiKey, grant.api_key_id).status == "revoked"
    page = dashboard.client.get("/dashboard/keys").text
    assert f"client-{grant.id}" not in page and "No MCP client is connected" in page


def test_usage_shows_balance_slots_and_budget_use(dashboard):
    _, secret, _ = dashboard.create_key(name="spender", scopes=list(keys.WIXMA_SCOPES),
                                        tools=["generator"], monthly_budget="300")
    created = dashboard.api.generate(secret, GENERATOR_BODY)  # low quality: 40 credits
    assert created.status_code == 201, created.text
    page = dashboard.client.get("/dashboard/usage").text
    assert re.search(r'id="balance">9960<', page)
    assert re.search(r'id="slots">1 / 4<', page)  # one pending job on the plus plan
    assert re.search(r"40 / 300", page)


def test_playground_jobs_go_through_the_api_path_and_report_progress(dashboard):
    api = dashboard.api
    started = dashboard.post("/dashboard/generations", {
        "tool": "generator", "prompt": "a red sneaker", "quality": "low", "seed": "7"})
    assert started.status_code == 303, started.text
    generation_id = started.headers["location"].split("started=")[1]
    with api.services.session_factory() as session:
        job = session.get(Generation, generation_id)
        key = session.get(ApiKey, job.api_key_id)
        assert (job.tool, job.surface, job.cost_credits, job.seed) == ("generator", "wixma", 40, 7)
        assert key.name == "Dashboard playground" and key.account_id == dashboard.account_id
        assert key.total_used == 40

    status = dashboard.client.get(f"/dashboard/generations/{generation_id}/status").json()
    assert status["status"] == "pending" and status["output_urls"] == []
    finish_next_job(api, [image_bytes(16, 16)])
    status = dashboard.client.get(f"/dashboard/generations/{generation_id}/status").json()
    assert status["status"] == "completed" and status["progress"] == 1.0
    (url,) = status["output_urls"]
    assert api.client.get(url.removeprefix("http://testserver")).status_code == 200
    gallery = dashboard.client.get("/dashboard/generations").text
    assert f'<img src="{url}"' in gallery

    # An upscale of an uploaded file and a photographer job from the finished generation.
    upscale = dashboard.post("/dashboard/generations", {"tool": "upscaler", "scale": "2"},
                             files={"image_file": ("in.png", image_bytes(20, 16), "image/png")})
    assert upscale.status_code == 303, upscale.text
    photo = dashboard.post("/dashboard/generations", {
        "tool": "photographer", "mode": "angle_change", "angle": "eye level, left side",
        "source_generation": generation_id, "quality": "low"})
    assert photo.status_code == 303, photo.text
    with api.services.session_factory() as session:
        upscale_job = session.get(Generation, upscale.headers["location"].split("started=")[1])
        photo_job = session.get(Generation, photo.headers["location"].split("started=")[1])
        assert "upload_id" in upscale_job.request["input"]["image"]
        assert upscale_job.cost_credits == 40 and upscale_job.api_key_id == key.id
        assert photo_job.request["input"]["main_image"] == {"generation_id": generation_id}
        assert photo_job.request["input"]["angle"] == "eye level, left side"


def test_a_bad_playground_request_names_the_field_and_stores_nothing(dashboard):
    response = dashboard.post("/dashboard/generations", {
        "tool": "photographer", "mode": "angle_change", "quality": "low"},
        files={"image_file": ("in.png", image_bytes(20, 16), "image/png")})
    assert response.status_code == 400
    assert 'id="error">input.angle' in response.text
    not_an_image = dashboard.post("/dashboard/generations", {"tool": "upscaler"},
                                  files={"image_file": ("in.png", b"plain text", "text/plain")})
    assert not_an_image.status_code == 400 and 'id="error">input.image' in not_an_image.text
    with dashboard.api.services.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Upload)) == 0
        assert session.scalar(select(func.count()).select_from(Generation)) == 0


def test_a_paused_playground_key_stops_the_playground(dashboard):
    body = {"tool": "generator", "prompt": "a cube", "quality": "low"}
    assert dashboard.post("/dashboard/generations", body).status_code == 303
    (playground,) = [k for k in dashboard.keys().values() if k.name == "Dashboard playground"]
    assert dashboard.post(f"/dashboard/keys/{playground.id}/pause").status_code == 303
    refused = dashboard.post("/dashboard/generations", body)
    assert refused.status_code == 403 and "paused" in refused.text
    with dashboard.api.services.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 1


def test_pages_use_only_local_assets_and_are_not_cached(dashboard):
    page = dashboard.client.get("/dashboard/keys")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"#]+\.(?:css|js))"', page.text)
    assert sorted(assets) == ["/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"]
    for asset, media_type in zip(sorted(assets), ("text/css", "text/javascript")):
        served = dashboard.client.get(asset)
        assert served.status_code == 200 and served.headers["content-type"].startswith(media_type)
        assert "http://" not in served.text and "https://" not in served.text
    assert dashboard.client.get("/dashboard/static/routes.py").status_code == 404


def test_editing_a_key_changes_its_tools_and_budgets_for_the_api(dashboard):
    api = dashboard.api
    key_id, secret, _ = dashboard.create_key(name="narrow", scopes=list(keys.WIXMA_SCOPES),
                                             tools=["upscaler"], monthly_budget="30")
    assert_error(api.generate(secret, GENERATOR_BODY), 403, "tool_not_allowed")
    edit_page = dashboard.client.get(f"/dashboard/keys/{key_id}/edit")
    assert edit_page.status_code == 200 and 'value="30"' in edit_page.text

    saved = dashboard.post(f"/dashboard/keys/{key_id}/edit", {
        "name": "wider", "scopes": list(keys.WIXMA_SCOPES), "tools": ["upscaler", "generator"],
        "monthly_budget": "30"})
    assert saved.status_code == 303, saved.text
    assert_error(api.generate(secret, GENERATOR_BODY), 402, "monthly_budget_exceeded")
    assert dashboard.post(f"/dashboard/keys/{key_id}/edit", {
        "name": "wider", "scopes": list(keys.WIXMA_SCOPES), "tools": ["upscaler", "generator"],
        "monthly_budget": "100", "per_request_limit": "50"}).status_code == 303
    created = api.generate(secret, GENERATOR_BODY)  # the same secret, now allowed: 40 credits
    assert created.status_code == 201, created.text
    key = dashboard.keys()[key_id]
    assert (key.name, key.allowed_tools, key.monthly_budget, key.per_request_limit,
            key.monthly_used) == ("wider", ["upscaler", "generator"], 100, 50, 40)

    bad = dashboard.post(f"/dashboard/keys/{key_id}/edit", {
        "name": "wider", "scopes": ["credits:read"], "tools": ["generator"],
        "total_budget": "-5"})
    assert bad.status_code == 400 and 'id="error">total_budget' in bad.text
    assert dashboard.keys()[key_id].scopes == list(keys.WIXMA_SCOPES)  # nothing changed

    assert dashboard.post(f"/dashboard/keys/{key_id}/revoke").status_code == 303
    refused = dashboard.post(f"/dashboard/keys/{key_id}/edit", {
        "name": "again", "scopes": ["credits:read"], "tools": ["generator"]})
    assert refused.status_code == 400 and "revoked key cannot be changed" in refused.text
    other_key, _ = api.key()
    assert dashboard.client.get(f"/dashboard/keys/{other_key}/edit").status_code == 404


def _started_job(dashboard, response) -> Generation:
    assert response.status_code == 303, response.text
    with dashboard.api.services.session_factory() as session:
        return session.get(Generation, response.headers["location"].split("started=")[1])


def test_the_playground_offers_every_tool_and_mode_of_the_registry(dashboard):
    from retouch.pipelines.vocabulary import AI_FILTERS
    from retouch.serving.tasks import TASKS

    page = dashboard.client.get("/dashboard/generations").text
    for value in (*TASKS.tools("wixma"), *TASKS.modes("photographer"), *AI_FILTERS):
        assert f'<option value="{value}"' in page, value
    assert 'name="reference_files" multiple' in page

    png = ("in.png", image_bytes(20, 16), "image/png")
    editor = _started_job(dashboard, dashboard.post(
        "/dashboard/generations", {"tool": "editor", "prompt": "match the reference style",
                                   "quality": "low"},
        files=[("image_file", png), ("reference_files", ("ref.png", image_bytes(16, 16),
                                                         "image/png"))]))
    images = editor.request["input"]["images"]
    assert editor.tool == "editor" and len(images) == 2
    assert all("upload_id" in ref for ref in images) and images[0] != images[1]
    assert editor.request["input"]["prompt"] == "match the reference style"

    filtered = _started_job(dashboard, dashboard.post(
        "/dashboard/generations", {"tool": "ai_filter", "filter": "noir-bw", "quality": "low"},
        files={"image_file": png}))
    assert (filtered.tool, filtered.request["input"]["filter"]) == ("ai_filter", "noir-bw")
    assert "upload_id" in filtered.request["input"]["image"]

    placed = _started_job(dashboard, dashboard.post(
        "/dashboard/generations", {"tool": "photographer", "mode": "object_placement",
                                   "text_prompt": "a lamp on the table", "quality": "low"},
        files=[("image_file", png), ("reference_files", ("lamp.png", image_bytes(16, 16),
                                                         "image/png"))]))
    assert placed.mode == "object_placement"
    assert len(placed.request["input"]["secondary_images"]) == 1

    no_image = dashboard.post("/dashboard/generations", {"tool": "editor", "prompt": "x"})
    assert no_image.status_code == 400 and 'id="error">input.images' in no_image.text


def test_aixpose_projects_pictures_lineage_and_approval(dashboard, tmp_path):
    import base64

    api = dashboard.api
    with transaction(api.services.session_factory) as session:
        secret = keys.create_key(session, dashboard.account_id, surface="aixpose")[1]
    headers = {"Authorization": f"Bearer {secret}"}
    project = api.client.post("/v1/projects", headers=headers, json={"name": "Seaside villa"})
    project_id = project.json()["id"]
    source = {"type": "base64", "media_type": "image/png",
              "data": base64.b64encode(image_bytes(32, 24)).decode()}
    picture = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers, json={
        "source": source, "scene_type": "interior", "scene_location": "living_room"}).json()

    listing = dashboard.client.get("/dashboard/projects")
    assert listing.status_code == 200
    assert f'href="/dashboard/projects/{project_id}">Seaside villa<' in listing.text
    page = dashboard.client.get(f"/dashboard/projects/{project_id}").text
    assert f'id="picture-{picture["id"]}"' in page and 'data-action="approve"' in page
    assert f'<img src="{picture["public_url"]}"' in page
    assert "<script>" not in page  # only the local script file

    approve = f"/dashboard/pictures/{picture['id']}/approve"
    refused = dashboard.client.post(approve, data={"csrf_token": "forged"},
                                    follow_redirects=False)
    assert refused.status_code == 403
    assert api.client.get(f"/v1/pictures/{picture['id']}", headers=headers).json()[
        "approved"] is False
    done = dashboard.client.post(approve, data={"csrf_token": dashboard.csrf(
        f"/dashboard/projects/{project_id}")}, follow_redirects=False)
    assert done.status_code == 303
    assert api.client.get(f"/v1/pictures/{picture['id']}", headers=headers).json()[
        "approved"] is True
    page = dashboard.client.get(f"/dashboard/projects/{project_id}").text
    assert 'data-role="approved"' in page and 'data-action="approve"' not in page

    lineage = dashboard.client.get(f"/dashboard/pictures/{picture['id']}/lineage").text
    assert f'data-picture-id="{picture["id"]}"' in lineage and "original upload" in lineage

    other = Dashboard(api, email="other@example.com")  # another account's member
    api.client.cookies.clear()
    other.sign_in()
    assert other.client.get(f"/dashboard/projects/{project_id}").status_code == 404
    assert other.client.get(f"/dashboard/pictures/{picture['id']}/lineage").status_code == 404
    assert f"/dashboard/projects/{project_id}" not in other.client.get(
        "/dashboard/projects").text
