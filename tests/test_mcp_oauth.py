"""Browser authorization for MCP clients, driven over HTTP: discovery from the 401, dynamic client
registration, authorize with PKCE, sign-in and consent in the dashboard, code → tokens, MCP calls
with the access token (bound to the grant's scopes, tools and budgets), refresh with rotation,
revocation → 401."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import ApiKey, OAuthGrant
from retouch.serving.mcp import grants

from mcp_fixtures import mcp_session, serve_app, tool_error, tool_json

REDIRECT_URI = "http://127.0.0.1:8765/callback"
EMAIL, PASSWORD = "owner@example.com", "correct horse battery"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


def hidden_value(html: str, name: str) -> str:
    match = re.search(rf"name='{re.escape(name)}' value='([^']*)'", html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def discover(base_url: str) -> dict:
    """What an MCP client does first: 401 → resource metadata → authorization server metadata."""
    unauthorized = httpx.post(f"{base_url}/mcp", headers=MCP_ACCEPT,
                              json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert unauthorized.status_code == 401
    challenge = unauthorized.headers["www-authenticate"]
    metadata_url = re.search(r'resource_metadata="([^"]+)"', challenge).group(1)
    resource = httpx.get(metadata_url).json()
    assert resource["resource"] == f"{base_url}/mcp"
    server = httpx.get(f"{resource['authorization_servers'][0]}"
                       "/.well-known/oauth-authorization-server").json()
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token"} <= set(server["grant_types_supported"])
    return server


def register(server: dict, **extra) -> dict:
    response = httpx.post(server["registration_endpoint"], json={
        "client_name": "Test Client", "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_post", **extra})
    assert response.status_code == 201, response.text
    return response.json()


def authorize(browser: httpx.Client, server: dict, client: dict, challenge: str,
              state: str = "state-1", **params) -> str:
    """GET /oauth/authorize; returns the consent page URL it redirects to."""
    response = browser.get(server["authorization_endpoint"], params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": state,
        "scope": "generations:create generations:read credits:read", **params})
    assert response.status_code == 302, response.text
    return response.headers["location"]


def sign_in(browser: httpx.Client, base_url: str, next_path: str, password: str = PASSWORD):
    page = browser.get(f"{base_url}/dashboard/login", params={"next": next_path})
    return browser.post(f"{base_url}/dashboard/login", data={
        "email": EMAIL, "password": password, "next": hidden_value(page.text, "next"),
        "csrf_token": hidden_value(page.text, "csrf_token")})


def approve(browser: httpx.Client, consent_url: str, decision: str = "approve",
            **fields) -> httpx.Response:
    page = browser.get(consent_url)
    assert page.status_code == 200, page.text
    checked = {name: re.findall(rf"name={name} value='([^']*)' checked", page.text)
               for name in ("scopes", "tools")}  # what a browser submits untouched
    form = {"request": hidden_value(page.text, "request"),
            "csrf_token": hidden_value(page.text, "csrf_token"), "decision": decision,
            **checked, **fields}
    return browser.post(consent_url.split("?")[0], data=form)


def redeem(server: dict, client: dict, code: str, verifier: str) -> httpx.Response:
    return httpx.post(server["token_endpoint"], data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "client_id": client["client_id"], "client_secret": client["client_secret"],
        "code_verifier": verifier})


def refresh(server: dict, client: dict, refresh_token: str) -> httpx.Response:
    return httpx.post(server["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": client["client_id"], "client_secret": client["client_secret"]})


def connect(app, browser, **choices) -> tuple[dict, dict, dict, str]:
    """The whole browser flow; returns (server metadata, client, tokens, consent redirect)."""
    server = discover(app.base_url)
    client = register(server)
    verifier, challenge = pkce_pair()
    consent_url = authorize(browser, server, client, challenge)
    assert browser.get(consent_url).status_code == 200  # already signed in
    approved = approve(browser, consent_url, **choices)
    assert approved.status_code == 303, approved.text
    location = approved.headers["location"]
    code = parse_qs(urlparse(location).query)["code"][0]
    tokens = redeem(server, client, code, verifier)
    assert tokens.status_code == 200, tokens.text
    return server, client, tokens.json(), location


@pytest.fixture
def served(tmp_path):
    with serve_app(tmp_path) as app:
        app.account_id = app.account(plan="plus", credits=1000)
        app.member(app.account_id, EMAIL, PASSWORD)
        yield app


def test_browser_authorization_then_mcp_calls_refresh_and_revoke(served):
    app = served
    server = discover(app.base_url)
    client = register(server)
    assert client["client_secret"] and client["token_endpoint_auth_method"] == "client_secret_post"
    verifier, challenge = pkce_pair()

    with httpx.Client() as browser:
        consent_url = authorize(browser, server, client, challenge)
        assert consent_url.startswith(f"{app.base_url}/oauth/consent?request=")
        # Not signed in: the consent page sends the browser to sign in, then back.
        redirected = browser.get(consent_url)
        assert redirected.status_code == 303
        assert redirected.headers["location"].startswith("/dashboard/login?next=")
        assert sign_in(browser, app.base_url, consent_url.removeprefix(app.base_url),
                       "wrong password").status_code == 401
        signed_in = sign_in(browser, app.base_url, consent_url.removeprefix(app.base_url))
        assert signed_in.status_code == 303
        assert app.base_url + signed_in.headers["location"] == consent_url
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie

        page = browser.get(consent_url)
        assert "Test Client" in page.text and "owner@example.com" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        # A forged form (wrong CSRF token) changes nothing.
        forged = browser.post(f"{app.base_url}/oauth/consent", data={
            "request": hidden_value(page.text, "request"), "csrf_token": "forged",
            "decision": "approve", "scopes": "generations:create"})
        assert forged.status_code == 400
        approved = approve(browser, consent_url, scopes=["generations:create",
                                                         "generations:read"],
                           tools=["generator"], monthly_budget="50", per_request_limit="60")
    assert approved.status_code == 303, approved.text
    redirect = urlparse(approved.headers["location"])
    query = parse_qs(redirect.query)
    assert f"{redirect.scheme}://{redirect.netloc}{redirect.path}" == REDIRECT_URI
    assert query["state"] == ["state-1"]
    code = query["code"][0]

    wrong = redeem(server, client, code, pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    tokens = redeem(server, client, code, verifier)
    assert tokens.status_code == 200, tokens.text
    tokens = tokens.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["scope"] == "generations:create generations:read"

    # The grant's dedicated key carries exactly what the member chose.
    with app.services.session_factory() as session:
        grant = session.query(OAuthGrant).one()
        key = session.get(ApiKey, grant.api_key_id)
        assert key.name == "MCP: Test Client" and key.account_id == app.account_id
        assert key.scopes == ["generations:create", "generations:read"]
        assert key.allowed_tools == ["generator"]
        assert (key.monthly_budget, key.per_request_limit) == (50, 60)

    async def calls(access_token: str) -> str:
        async with mcp_session(app.mcp_url, access_token) as session:
            await session.send_ping()
            assert len((await session.list_tools()).tools) == 10  # the seed's nine + cancel
            created = await session.call_tool("wixma_generate_image",
                                              {"prompt": "a lamp", "quality": "low"})
            assert not created.is_error, created
            generation = tool_json(created)["generation"]
            assert generation["cost_credits"] == 40
            fetched = tool_json(await session.call_tool(
                "wixma_get_generation", {"generation_id": generation["id"]}))
            assert fetched["generation"]["id"] == generation["id"]
            assert tool_error(await session.call_tool("wixma_upscale_image", {
                "image": {"generation_id": generation["id"]}}))["code"] == "tool_not_allowed"
            assert tool_error(await session.call_tool("wixma_get_credits", {}))["code"] \
                == "forbidden"  # credits:read was requested but not granted
            assert tool_error(await session.call_tool("wixma_generate_image", {
                "prompt": "again", "quality": "low"}))["code"] == "monthly_budget_exceeded"
            return generation["id"]

    asyncio.run(calls(tokens["access_token"]))

    rotated = refresh(server, client, tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    rotated = rotated.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["access_token"] != tokens["access_token"]

    async def ping(access_token: str) -> None:
        async with mcp_session(app.mcp_url, access_token) as session:
            await session.send_ping()

    asyncio.run(ping(rotated["access_token"]))

    # Settings → disconnect: the grant, its key and every token stop working.
    with transaction(app.services.session_factory) as session:
        [connected] = grants.list_connected_clients(session, app.account_id)
        assert connected.name == "Test Client"
        grants.revoke_grant(session, connected.grant.id, account_id=app.account_id)
    for token in (rotated["access_token"], tokens["access_token"]):
        response = httpx.post(app.mcp_url, headers={**MCP_ACCEPT,
                                                    "Authorization": f"Bearer {token}"},
                              json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert refresh(server, client, rotated["refresh_token"]).json()["error"] == "invalid_grant"


def test_replayed_codes_and_refresh_tokens_end_the_grant(served):
    app = served
    with httpx.Client() as browser:
        sign_in(browser, app.base_url, "/dashboard")
        server, client, tokens, location = connect(app, browser)
        code = parse_qs(urlparse(location).query)["code"][0]
        # A second redemption of a used code: refused, and the grant is revoked.
        assert redeem(server, client, code, "x" * 43).json()["error"] == "invalid_grant"
        assert refresh(server, client, tokens["refresh_token"]).json()["error"] \
            == "invalid_grant"

        server, client, tokens, _ = connect(app, browser)
        first = refresh(server, client, tokens["refresh_token"]).json()
        # The spent refresh token shows up again: one holder is not the client; end it all.
        assert refresh(server, client, tokens["refresh_token"]).json()["error"] \
            == "invalid_grant"
        assert refresh(server, client, first["refresh_token"]).json()["error"] \
            == "invalid_grant"
    with app.services.session_factory() as session:
        statuses = sorted(g.status for g in session.query(OAuthGrant))
        revoked_keys = [session.get(ApiKey, g.api_key_id).status
                        for g in session.query(OAuthGrant)]
    assert statuses == ["revoked", "revoked"] and revoked_keys == ["revoked", "revoked"]


def test_authorize_refuses_bad_requests_and_denial_reaches_the_client(served):
    app = served
    server = discover(app.base_url)
    client = register(server)
    _, challenge = pkce_pair()
    with httpx.Client() as browser:
        missing_pkce = browser.get(server["authorization_endpoint"], params={
            "response_type": "code", "client_id": client["client_id"],
            "redirect_uri": REDIRECT_URI, "state": "s"})
        assert missing_pkce.status_code == 302
        assert parse_qs(urlparse(missing_pkce.headers["location"]).query)["error"] \
            == ["invalid_request"]
        plain = browser.get(server["authorization_endpoint"], params={
            "response_type": "code", "client_id": client["client_id"],
            "redirect_uri": REDIRECT_URI, "code_challenge": challenge,
            "code_challenge_method": "plain"})
        assert "error=invalid_request" in plain.headers["location"]
        other_redirect = browser.get(server["authorization_endpoint"], params={
            "response_type": "code", "client_id": client["client_id"],
            "redirect_uri": "https://evil.example/cb", "code_challenge": challenge})
        assert other_redirect.status_code == 400  # never redirected to an unregistered URI
        other_resource = authorize_error(browser, server, client, challenge,
                                         resource="https://elsewhere.example/mcp")
        assert other_resource == ["invalid_target"]

        sign_in(browser, app.base_url, "/dashboard")
        denied = approve(browser, authorize(browser, server, client, challenge, state="s2"),
                         decision="deny")
        query = parse_qs(urlparse(denied.headers["location"]).query)
        assert query["error"] == ["access_denied"] and query["state"] == ["s2"]
        # Sign-in never redirects off-site.
        assert sign_in(browser, app.base_url, "//evil.example/").headers["location"] \
            == "/dashboard"
    # Registration refuses redirect URIs a browser could be bounced to insecurely.
    bad = httpx.post(server["registration_endpoint"], json={
        "client_name": "x", "redirect_uris": ["http://evil.example/cb"]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_redirect_uri"


def authorize_error(browser, server, client, challenge, **params) -> list[str]:
    response = browser.get(server["authorization_endpoint"], params={
        "response_type": "code", "client_id": client["client_id"],
        "redirect_uri": REDIRECT_URI, "code_challenge": challenge, **params})
    assert response.status_code == 302
    return parse_qs(urlparse(response.headers["location"]).query)["error"]


class MemoryTokenStorage:
    """The SDK client's token store, in memory."""

    def __init__(self):
        self.tokens = self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


def test_the_sdk_oauth_client_connects_through_the_consent_page(served):
    """The SDK's own OAuth client: it discovers, registers, opens the authorize URL (here the
    signed-in 'browser' approves it) and calls tools with the token it obtained."""
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    app = served
    browser = httpx.Client()
    sign_in(browser, app.base_url, "/dashboard")
    answer: dict[str, str | None] = {}

    async def open_in_browser(authorization_url: str) -> None:
        consent = browser.get(authorization_url)
        assert consent.status_code == 302, consent.text
        approved = approve(browser, consent.headers["location"], tools=["generator"])
        query = parse_qs(urlparse(approved.headers["location"]).query)
        answer.update(code=query["code"][0], state=query.get("state", [None])[0])

    async def callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=answer["code"], state=answer["state"])

    storage = MemoryTokenStorage()
    auth = OAuthClientProvider(app.mcp_url, OAuthClientMetadata(
        client_name="SDK Client", redirect_uris=[REDIRECT_URI], response_types=["code"],
        grant_types=["authorization_code", "refresh_token"],
        scope="generations:create generations:read credits:read"), storage,
        open_in_browser, callback)

    async def scenario():
        http = create_mcp_http_client(auth=auth)
        async with http, streamable_http_client(app.mcp_url, http_client=http) as (r, w):
            async with ClientSession(r, w) as session:
                await session.initialize()
                credits = tool_json(await session.call_tool("wixma_get_credits", {}))
                assert credits["credits"]["balance"] == 1000
                error = tool_error(await session.call_tool("wixma_ai_filter", {
                    "filter": "polaroid", "image": {"upload_id": "none"}}))
                assert error["code"] == "tool_not_allowed"

    try:
        asyncio.run(scenario())
    finally:
        browser.close()
    assert storage.tokens.access_token.startswith("wxo_at_")
    with app.services.session_factory() as session:
        key = session.get(ApiKey, session.query(OAuthGrant).one().api_key_id)
    assert key.name == "MCP: SDK Client" and key.allowed_tools == ["generator"]


def test_expired_authorization_state_is_purged(tmp_path):
    from datetime import timedelta

    from retouch.serving.core.db import make_engine, make_session_factory, run_migrations, utcnow
    from retouch.serving.core.tables import OAuthAuthorizationRequest

    url = f"sqlite:///{tmp_path / 'oauth.db'}"
    run_migrations(url)
    factory = make_session_factory(make_engine(url))
    params = {"redirect_uri": REDIRECT_URI, "code_challenge": "c", "scopes": []}
    with transaction(factory) as session:
        grants.register_client(session, "client-1", {"client_name": "C"}, None)
        stale = grants.create_authorization_request(session, "client-1", params)
        recent = grants.create_authorization_request(session, "client-1", params)
        session.get(OAuthAuthorizationRequest, stale).expires_at = utcnow() - timedelta(days=2)
        session.get(OAuthAuthorizationRequest, recent).expires_at = utcnow() - timedelta(hours=1)
    with transaction(factory) as session:
        grants.create_authorization_request(session, "client-1", params)
    with factory() as session:
        assert session.get(OAuthAuthorizationRequest, stale) is None
        assert session.get(OAuthAuthorizationRequest, recent) is not None  # kept a day
        with pytest.raises(InvalidInput, match="expired"):
            grants.pending_authorization(session, recent)


def test_approving_a_client_again_replaces_its_previous_grant(served):
    app = served
    server = discover(app.base_url)
    client = register(server)
    issued = []
    with httpx.Client() as browser:
        sign_in(browser, app.base_url, "/dashboard")
        for _ in range(2):
            verifier, challenge = pkce_pair()
            approved = approve(browser, authorize(browser, server, client, challenge))
            code = parse_qs(urlparse(approved.headers["location"]).query)["code"][0]
            issued.append(redeem(server, client, code, verifier).json())
    statuses = []
    for tokens in issued:
        response = httpx.post(app.mcp_url, headers={
            **MCP_ACCEPT, "Authorization": f"Bearer {tokens['access_token']}"},
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        statuses.append(response.status_code)
    assert statuses == [401, 200]
    with transaction(app.services.session_factory) as session:
        assert len(grants.list_connected_clients(session, app.account_id)) == 1
