"""Security review items, each as a check:

- a full API run's logs (every logger at DEBUG: keys, webhook secrets and deliveries, jobs that
  complete and fail, uploads, refused calls) hold no `wx_live_` / `aix_live_` / `whsec_` secret;
- dashboard, sign-in and consent pages send a CSP with no inline script or style (and carry
  none), `X-Content-Type-Options: nosniff`, `frame-ancestors 'none'` + `X-Frame-Options: DENY`;
  static files are `nosniff`;
- the session cookie is `HttpOnly; SameSite=Lax`, plus `Secure` when served over HTTPS;
- sign-in attempts are rate-limited per e-mail address;
- key and session rows hold only the SHA-256 of their secrets, and a row found by that hash is
  accepted only after a constant-time compare of the stored and computed hashes.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets

from contextlib import nullcontext
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from retouch.serving.core import accounts, jobs, keys, members
from retouch.serving.core.db import make_engine, transaction
from retouch.serving.core.errors import Unauthorized
from retouch.serving.mcp import grants
from retouch.serving.mcp.signin import LOGIN_ATTEMPTS_PER_MINUTE

from api_fixtures import GENERATOR_BODY, api_for, image_bytes, make_settings
from db_fixtures import BACKENDS, postgres_schema
from test_dashboard_pages import PASSWORD, Dashboard, csrf_token_of
from webhook_receiver import webhook_receiver

KEY_FORM = {"name": "from the dashboard", "scopes": list(keys.WIXMA_SCOPES),
            "tools": ["generator", "editor"]}
REDIRECT_URI = "http://127.0.0.1/callback"
SECRET_PATTERN = re.compile(r"(wx_live_|aix_live_|whsec_)[A-Za-z0-9_\-+/=]{8,}")


def test_a_full_api_run_logs_no_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    with webhook_receiver([500, 200]) as receiver, api_for(make_settings(
            tmp_path, allow_private_urls=True, webhook_poll_seconds=0.05,
            webhook_retry_scale=0.001)) as api:
        account_id = api.account(plan="pro", credits=10_000)
        wixma_id, wixma = api.key(account_id)
        with transaction(api.services.session_factory) as session:
            aixpose = keys.create_key(session, account_id, surface="aixpose")[1]
            members.create_member(session, account_id, "sec@example.com", PASSWORD)
        shown += [wixma, aixpose]
        headers = api.headers(aixpose)
        hook_secret = api.client.get("/v1/webhooks/secret", headers=headers).json()
        rotated = api.client.post("/v1/webhooks/secret/rotate", headers=headers).json()
        shown += [v for body in (hook_secret, rotated) for v in body.values()
                  if isinstance(v, str) and v.startswith("whsec_")]
        # Jobs: one completes, one fails (refund), one refused, one from a revoked key.
        upload = api.upload(wixma, image_bytes(32, 32))
        assert api.generate(wixma, GENERATOR_BODY).status_code == 201
        assert api.generate(wixma, {"tool": "upscaler", "input": {
            "image": {"upload_id": upload["id"]}}}).status_code == 201
        factory = api.services.session_factory
        first = jobs.lease_next_job(factory, "worker", 30)
        jobs.complete_job(factory, first.id, "worker", [])
        second = jobs.lease_next_job(factory, "worker", 30)
        jobs.fail_job(factory, second.id, "worker", "service_unavailable", "boom")
        assert api.generate(wixma, {"tool": "nope"}).status_code == 400
        api.client.get("/api/v1/credits", headers=api.headers(wixma + "x"))
        # Pictures with a webhook: deliveries are signed with the secret and logged.
        project = api.client.post("/v1/projects", headers=headers,
                                  json={"name": "p"}).json()["id"]
        picture = api.client.post(f"/v1/projects/{project}/pictures", headers=headers, json={
            "source": {"type": "base64", "media_type": "image/png",
                       "data": base64.b64encode(image_bytes(64, 64)).decode()},
            "scene_type": "interior", "webhook_url": receiver.url})
        assert picture.status_code == 201, picture.text
        enhanced = api.client.post(f"/v1/pictures/{picture.json()['id']}/enhancements",
                                   headers=headers, json={
                                       "instruction": {"source": "custom", "prompt": "brighter"},
                                       "webhook_url": receiver.url})
        assert enhanced.status_code == 201, enhanced.text
        third = jobs.lease_next_job(factory, "worker", 30)
        jobs.fail_job(factory, third.id, "worker", "service_unavailable", "boom")
        receiver.wait_for(2)  # a failed delivery, then its retry
        # Dashboard: sign in and create a key (its secret is shown once, on the page).
        page = Dashboard.__new__(Dashboard)
        page.api, page.client, page.email = api, api.client, "sec@example.com"
        page.sign_in()
        _, dashboard_secret, _ = page.create_key(**KEY_FORM)
        shown.append(dashboard_secret)
        with transaction(factory) as session:
            keys.set_key_status(session, wixma_id, "revoked")
        api.client.get("/api/v1/credits", headers=api.headers(wixma))
    names = {record.name.split(".")[0] for record in caplog.records}
    assert "httpx" in names, names  # webhook deliveries were logged
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 20  # the run did log
    assert len(shown) >= 5
    for secret in shown:
        assert secret not in logged
    assert SECRET_PATTERN.search(logged) is None, SECRET_PATTERN.search(logged)


@pytest.mark.parametrize("backend", BACKENDS)
def test_database_errors_and_sql_logs_do_not_carry_parameters(tmp_path, caplog, backend):
    """A failing statement's message (which the 503 mapper logs) and SQL echo leave out the
    bound values, such as a webhook secret being written."""
    secret = "whsec_" + "s3cr3t" * 6
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with (postgres_schema("test_hidden") if backend == "postgres" else nullcontext(url)) as url:
        engine = make_engine(url, echo=True)
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.execute(text("SELECT :secret FROM no_such_table"), {"secret": secret})
        engine.dispose()
    assert "no_such_table" in str(caught.value) and secret not in str(caught.value)
    assert any("no_such_table" in r.getMessage() for r in caplog.records)
    assert all(secret not in r.getMessage() for r in caplog.records)


# ---- credentials at rest ----------------------------------------------------------------------
def key_and_session(sf):
    """An account with a Wixma key, a signed-in member and an MCP client's OAuth access token:
    (key secret, session cookie, the session's hash, access token)."""
    with transaction(sf) as session:
        account_id = accounts.create_account(session, "Acme", "standard", 1000).id
        secret = keys.create_key(session, account_id)[1]
        member = members.create_member(session, account_id, "rest@example.com", PASSWORD)
        signed_in, cookie = members.start_session(session, member)
        grants.register_client(session, "client-1", {"redirect_uris": [REDIRECT_URI]}, None)
        request_id = grants.create_authorization_request(session, "client-1", {
            "redirect_uri": REDIRECT_URI, "state": "s", "code_challenge": "c" * 43,
            "scopes": ["credits:read"]})
        back = grants.approve_authorization(session, request_id, signed_in,
                                            grants.GrantChoices(scopes=["credits:read"]))
        code = parse_qs(urlsplit(back).query)["code"][0]
        access = grants.exchange_code(session, "client-1", code).access_token
        return secret, cookie, signed_in.session_id, access


def stored_values(sf, table: str) -> list[str]:
    with sf() as session:
        return [str(value) for row in session.execute(text(f"SELECT * FROM {table}"))
                for value in row]


def test_key_and_session_rows_hold_only_the_hash_of_their_secret(sf):
    secret, cookie, session_hash, _ = key_and_session(sf)
    key_values = stored_values(sf, "api_keys")
    assert keys.hash_secret(secret) in key_values
    hidden = secret.removeprefix("wx_live_")[keys.SHOWN_PREFIX_CHARS:]  # all but the shown prefix
    assert not [value for value in key_values if hidden in value]
    session_values = stored_values(sf, "member_sessions")
    assert session_hash in session_values and session_hash != cookie
    assert not [value for value in session_values if cookie in value]


def test_a_row_found_by_hash_is_accepted_only_by_a_constant_time_compare(sf, monkeypatch):
    secret, cookie, session_hash, access = key_and_session(sf)
    compared = []

    def differs(stored, computed):  # as if the lookup had matched a row loosely
        compared.append((stored, computed))
        return False

    monkeypatch.setattr(secrets, "compare_digest", differs)
    with sf() as session:
        with pytest.raises(Unauthorized):
            keys.authenticate(session, secret, touch=False)
        assert members.signed_in_member(session, cookie) is None
        assert grants.caller_for_bearer(session, secret) is None  # the key over MCP
        assert grants.caller_for_bearer(session, access) is None  # an OAuth access token
    key_hash, token_hash = keys.hash_secret(secret), keys.hash_secret(access)
    assert compared == [(key_hash, key_hash), (session_hash, session_hash), (key_hash, key_hash),
                        (token_hash, token_hash)]


def test_a_cached_key_is_accepted_only_under_its_own_hash(sf):
    with transaction(sf) as session:
        account_id = accounts.create_account(session, "Acme", "standard", 1000).id
        (_, first), (second_key, second) = (keys.create_key(session, account_id)
                                            for _ in range(2))
        try:
            keys.VERIFIED_KEYS.put(keys.hash_secret(first), second_key)  # a wrong entry
            assert keys.cached_key(first) is None
            keys.VERIFIED_KEYS.put(keys.hash_secret(second), second_key)
            assert keys.cached_key(second).id == second_key.id
        finally:
            keys.VERIFIED_KEYS.clear()


# ---- pages ------------------------------------------------------------------------------------
INLINE = re.compile(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", re.IGNORECASE)


def csp_directives(response) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    return {part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
            for part in policy.split(";") if part.strip()}


@pytest.fixture
def signed_in(api):
    dashboard = Dashboard(api)
    dashboard.sign_in()
    return dashboard


def test_pages_send_security_headers_and_no_inline_code(signed_in):
    client = signed_in.client
    key_id, _, _ = signed_in.create_key(**KEY_FORM)
    pages = {path: client.get(path) for path in (
        "/dashboard/keys", "/dashboard/usage", "/dashboard/generations",
        f"/dashboard/keys/{key_id}/edit", "/dashboard/login")}
    pages["sign-out refused (plain page)"] = client.post("/dashboard/logout", data={})
    for name, response in pages.items():
        assert response.headers["content-type"].startswith("text/html"), name
        directives = csp_directives(response)
        for source in ("script-src", "style-src", "default-src"):
            assert "'unsafe-inline'" not in directives.get(source, ""), (name, directives)
        assert directives["frame-ancestors"] == "'none'", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert INLINE.search(response.text) is None, (name, INLINE.search(response.text))
    for name in ("dashboard.css", "dashboard.js", "signin.css"):
        static = client.get(f"/dashboard/static/{name}")
        assert static.status_code == 200 and static.headers["x-content-type-options"] == \
            "nosniff"


@pytest.mark.parametrize("public_url,secure", [("http://testserver", False),
                                               ("https://wixma.example", True)])
def test_the_session_cookie_is_httponly_lax_and_secure_over_https(tmp_path, public_url, secure):
    with api_for(make_settings(tmp_path, public_base_url=public_url)) as api:
        dashboard = Dashboard(api)
        base = "https://testserver" if secure else "http://testserver"  # Secure cookies need https
        form = api.client.get(f"{base}/dashboard/login")
        response = api.client.post(f"{base}/dashboard/login", data={
            "email": dashboard.email, "password": PASSWORD,
            "csrf_token": csrf_token_of(form.text)}, follow_redirects=False)
        assert response.status_code == 303
        session_cookie = [c for c in response.headers.get_list("set-cookie")
                          if c.startswith("retouch_session=")]
        attributes = {part.strip().split("=", 1)[0].lower()
                      for part in session_cookie[0].split(";")[1:]}
        assert {"httponly", "samesite"} <= attributes
        assert "samesite=lax" in session_cookie[0].lower()
        assert ("secure" in attributes) is secure


def test_sign_in_is_rate_limited_per_email(api):
    dashboard = Dashboard(api)
    token = csrf_token_of(api.client.get("/dashboard/login").text)
    statuses = []
    for _ in range(LOGIN_ATTEMPTS_PER_MINUTE + 2):
        statuses.append(api.client.post("/dashboard/login", data={
            "email": dashboard.email, "password": "wrong guess", "csrf_token": token},
            follow_redirects=False).status_code)
    assert statuses[:LOGIN_ATTEMPTS_PER_MINUTE] == [401] * LOGIN_ATTEMPTS_PER_MINUTE
    assert statuses[LOGIN_ATTEMPTS_PER_MINUTE:] == [429, 429]
    # Even the right password is refused until the window moves on.
    right = api.client.post("/dashboard/login", data={
        "email": dashboard.email, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False)
    assert right.status_code == 429 and "retouch_session" not in right.cookies
