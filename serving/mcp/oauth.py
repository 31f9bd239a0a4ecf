"""OAuth 2.1 for MCP clients (the MCP authorization spec): metadata, dynamic client registration,
authorize with PKCE (S256), token (authorization_code, refresh_token with rotation), revocation,
and the consent page where a signed-in member approves a client.

The protocol endpoints are the `mcp` SDK's handlers (request validation, PKCE verification,
RFC error shapes) mounted at `/oauth/*`, backed by `WixmaOAuthProvider`, which keeps all state in
the database through `grants`. Client secrets are checked against their stored SHA-256 by
`HashedSecretAuthenticator`. `/oauth/authorize` sends the browser to `/oauth/consent`, where the
member picks scopes, allowed tools, budgets and a rate limit; approving creates the grant and its
dedicated API key (see `grants`).
"""

from __future__ import annotations

import base64
import binascii
from html import escape
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.revoke import RevocationHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import (AccessToken, AuthorizationCode, AuthorizationParams,
                                      AuthorizeError, RefreshToken, RegistrationError, TokenError)
from mcp.server.auth.routes import cors_middleware
from mcp.server.auth.settings import ClientRegistrationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthMetadata, OAuthToken
from mcp.shared.auth import ProtectedResourceMetadata
from starlette.routing import Route

from retouch.serving.core.errors import InvalidInput, RateLimitExceeded
from retouch.serving.tasks import TASKS
from retouch.serving.core.db import transaction
from retouch.serving.core.keys import WIXMA_SCOPES

from . import grants
from .pages import error_html, hidden, html_page, message_page
from .signin import CROSS_SITE_MESSAGE, check_csrf, current_member, from_this_site, login_url

AUTHORIZE_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"
REGISTER_PATH = "/oauth/register"
REVOKE_PATH = "/oauth/revoke"
CONSENT_PATH = "/oauth/consent"
MCP_PATH = "/mcp"
AUTH_SERVER_METADATA_PATH = "/.well-known/oauth-authorization-server"
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"

SCOPE_LABELS = {
    "generations:create": "Start generations (spends credits)",
    "generations:read": "Read generations and their images",
    "uploads:create": "Import images",
    "credits:read": "Read the credit balance and budgets",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
REGISTRATIONS_PER_MINUTE = 20  # per client address


def issuer_url(services) -> str:
    return services.settings.resolved_public_base_url


def resource_url(services) -> str:
    return issuer_url(services) + MCP_PATH


def resource_metadata_url(services) -> str:
    return issuer_url(services) + RESOURCE_METADATA_PATH + MCP_PATH


# ---- the provider the SDK handlers call -------------------------------------------------------
def _client_info(client) -> OAuthClientInformationFull:
    return OAuthClientInformationFull.model_validate({**client.registration, "client_id": client.id})


def _check_redirect_uris(uris: list[Any]) -> None:
    """OAuth 2.1: HTTPS, loopback HTTP (native apps) or a private-use scheme; no fragments."""
    for uri in uris:
        parsed = urlparse(str(uri))
        scheme = parsed.scheme.lower()
        if parsed.fragment or scheme in ("javascript", "data", "file", "vbscript"):
            raise RegistrationError("invalid_redirect_uri", f"{uri} is not allowed")
        if scheme == "http" and parsed.hostname not in LOOPBACK_HOSTS:
            raise RegistrationError("invalid_redirect_uri",
                                    f"{uri}: http redirect URIs must use a loopback host")


class WixmaOAuthProvider:
    """`OAuthAuthorizationServerProvider` over the database; blocking work runs in threads."""

    def __init__(self, services):
        self.services = services

    async def _in_transaction(self, fn, *args):
        def work():
            with transaction(self.services.session_factory) as session:
                return fn(session, *args)

        return await anyio.to_thread.run_sync(work)

    async def _read(self, fn, *args):
        """Read-only lookups (every `/mcp` request verifies its token) take no write lock."""
        def work():
            with self.services.session_factory() as session:
                return fn(session, *args)

        return await anyio.to_thread.run_sync(work)

    # clients
    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        client = await self._read(grants.get_client, client_id)
        return _client_info(client) if client is not None else None

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        _check_redirect_uris(client_info.redirect_uris or [])
        registration = client_info.model_dump(mode="json", exclude_none=True,
                                              exclude={"client_id", "client_secret"})
        await self._in_transaction(grants.register_client, client_info.client_id, registration,
                                   client_info.client_secret)

    # authorization
    async def authorize(self, client: OAuthClientInformationFull,
                        params: AuthorizationParams) -> str:
        if params.resource and params.resource.rstrip("/") != resource_url(self.services):
            raise AuthorizeError("invalid_target", f"unknown resource {params.resource}")
        # Scopes this server does not know are ignored; none left means all of ours are offered.
        scopes = [s for s in params.scopes or [] if s in WIXMA_SCOPES] or list(WIXMA_SCOPES)
        request_id = await self._in_transaction(
            grants.create_authorization_request, client.client_id,
            {"redirect_uri": str(params.redirect_uri),
             "redirect_uri_provided_explicitly": params.redirect_uri_provided_explicitly,
             "state": params.state, "scopes": scopes,
             "code_challenge": params.code_challenge,
             "resource": params.resource or resource_url(self.services)})
        return f"{issuer_url(self.services)}{CONSENT_PATH}?request={request_id}"

    async def load_authorization_code(self, client: OAuthClientInformationFull,
                                      authorization_code: str) -> AuthorizationCode | None:
        row = await self._in_transaction(grants.find_code, client.client_id, authorization_code)
        if row is None:
            return None
        return AuthorizationCode(
            code=authorization_code, scopes=list(row.scopes), expires_at=row.expires_at.timestamp(),
            client_id=row.client_id, code_challenge=row.code_challenge,
            redirect_uri=row.redirect_uri,
            redirect_uri_provided_explicitly=row.redirect_uri_provided_explicitly,
            resource=row.resource)

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: AuthorizationCode) -> OAuthToken:
        pair = await self._in_transaction(grants.exchange_code, client.client_id,
                                          authorization_code.code)
        if pair is None:
            raise TokenError("invalid_grant", "authorization code is invalid or already used")
        return _oauth_token(pair)

    # tokens
    async def load_refresh_token(self, client: OAuthClientInformationFull,
                                 refresh_token: str) -> RefreshToken | None:
        row = await self._in_transaction(grants.find_refresh_token, client.client_id,
                                         refresh_token)
        if row is None:
            return None
        return RefreshToken(token=refresh_token, client_id=row.client_id, scopes=list(row.scopes),
                            expires_at=int(row.expires_at.timestamp()), resource=row.resource)

    async def exchange_refresh_token(self, client: OAuthClientInformationFull,
                                     refresh_token: RefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        pair = await self._in_transaction(grants.rotate_refresh_token, client.client_id,
                                          refresh_token.token, scopes)
        if pair is None:
            raise TokenError("invalid_grant", "refresh token is invalid or already used")
        return _oauth_token(pair)

    async def load_access_token(self, token: str) -> AccessToken | None:
        caller = await self._read(grants.caller_for_bearer, token)
        return access_token_for(token, caller) if caller is not None else None

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        await self._in_transaction(grants.revoke_token, token.client_id, token.token)


def _oauth_token(pair: grants.TokenPair) -> OAuthToken:
    return OAuthToken(access_token=pair.access_token, token_type="Bearer",
                      expires_in=pair.expires_in, scope=" ".join(pair.scopes),
                      refresh_token=pair.refresh_token)


def access_token_for(credential: str, caller: grants.Caller) -> AccessToken:
    """The SDK's view of a verified caller; `subject` carries the API key id."""
    expires = int(caller.expires_at.timestamp()) if caller.expires_at else None
    return AccessToken(token=credential, client_id=caller.client_id, scopes=caller.scopes,
                       expires_at=expires, resource=caller.resource, subject=caller.api_key_id)


class BearerVerifier:
    """The `TokenVerifier` of `/mcp`: Wixma API keys and OAuth access tokens."""

    def __init__(self, provider: WixmaOAuthProvider):
        self.provider = provider

    async def verify_token(self, token: str) -> AccessToken | None:
        return await self.provider.load_access_token(token)


class HashedSecretAuthenticator(ClientAuthenticator):
    """Client authentication at `/oauth/token` and `/oauth/revoke` against the stored SHA-256
    of the client secret (`client_secret_post` or `client_secret_basic`; none for public
    clients, which PKCE protects)."""

    def __init__(self, provider: WixmaOAuthProvider):
        super().__init__(provider)
        self.wixma = provider

    async def authenticate_request(self, request) -> OAuthClientInformationFull:
        form = await request.form()
        client_id = form.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise AuthenticationError("Missing client_id")
        presented = form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                basic_id, presented = base64.b64decode(header[6:]).decode().split(":", 1)
            except (ValueError, UnicodeDecodeError, binascii.Error):
                raise AuthenticationError("Invalid Basic authentication header") from None
            if unquote(basic_id) != client_id:
                raise AuthenticationError("Client ID mismatch in Basic auth")
            presented = unquote(presented)
        client = await self.wixma._read(grants.get_client, client_id)
        if client is None:
            raise AuthenticationError("Invalid client_id")
        if not grants.client_secret_matches(client, presented if isinstance(presented, str)
                                            else None):
            raise AuthenticationError("Invalid client_secret")
        return _client_info(client)


# ---- metadata ---------------------------------------------------------------------------------
def authorization_server_metadata(services) -> dict[str, Any]:
    base = issuer_url(services)
    metadata = OAuthMetadata(
        issuer=base, authorization_endpoint=base + AUTHORIZE_PATH, token_endpoint=base + TOKEN_PATH,
        registration_endpoint=base + REGISTER_PATH, revocation_endpoint=base + REVOKE_PATH,
        scopes_supported=list(WIXMA_SCOPES), response_types_supported=["code"],
        grant_types_supported=["authorization_code", "refresh_token"],
        token_endpoint_auth_methods_supported=["client_secret_post", "client_secret_basic",
                                               "none"],
        revocation_endpoint_auth_methods_supported=["client_secret_post", "client_secret_basic",
                                                    "none"],
        code_challenge_methods_supported=["S256"])
    return metadata.model_dump(mode="json", exclude_none=True)


def protected_resource_metadata(services) -> dict[str, Any]:
    metadata = ProtectedResourceMetadata(
        resource=resource_url(services), authorization_servers=[issuer_url(services)],
        scopes_supported=list(WIXMA_SCOPES), bearer_methods_supported=["header"],
        resource_name="Wixma")
    return metadata.model_dump(mode="json", exclude_none=True)


def _metadata_endpoint(build):
    async def endpoint(request: Request) -> Response:
        return JSONResponse(build(request.app.state.services),
                            headers={"Cache-Control": "public, max-age=3600"})

    return endpoint


def rate_limited(handler, name: str, per_minute: int):
    """`handler` behind a per-client-address rate limit (unauthenticated endpoints)."""
    async def endpoint(request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        limiter = request.app.state.services.rate_limiter
        try:
            await anyio.to_thread.run_sync(limiter.hit, f"{name}:{address}", per_minute)
        except RateLimitExceeded as exc:
            return JSONResponse({"error": "slow_down", "error_description": exc.message},
                                status_code=429, headers=exc.headers)
        return await handler(request)

    return endpoint


def oauth_routes(services) -> list[Route]:
    """The protocol endpoints (SDK handlers) and the metadata documents, as Starlette routes."""
    provider = WixmaOAuthProvider(services)
    authenticator = HashedSecretAuthenticator(provider)
    # Any registered scope string is accepted (clients send their own); authorize keeps ours.
    registration = ClientRegistrationOptions(enabled=True, default_scopes=list(WIXMA_SCOPES))
    token = TokenHandler(provider, authenticator)
    register = RegistrationHandler(provider, options=registration)
    revoke = RevocationHandler(provider, authenticator)
    authorize = AuthorizationHandler(provider)
    read = ["GET", "OPTIONS"]
    server_metadata = cors_middleware(_metadata_endpoint(authorization_server_metadata), read)
    resource_metadata = cors_middleware(_metadata_endpoint(protected_resource_metadata), read)
    return [
        Route(AUTH_SERVER_METADATA_PATH, server_metadata, methods=read),
        Route(RESOURCE_METADATA_PATH, resource_metadata, methods=read),
        Route(RESOURCE_METADATA_PATH + MCP_PATH, resource_metadata, methods=read),
        Route(AUTHORIZE_PATH, authorize.handle, methods=["GET", "POST"]),
        Route(TOKEN_PATH, cors_middleware(token.handle, ["POST", "OPTIONS"]),
              methods=["POST", "OPTIONS"]),
        Route(REGISTER_PATH, cors_middleware(
            rate_limited(register.handle, "oauth-register", REGISTRATIONS_PER_MINUTE),
            ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"]),
        Route(REVOKE_PATH, cors_middleware(revoke.handle, ["POST", "OPTIONS"]),
              methods=["POST", "OPTIONS"]),
    ]


# ---- consent ----------------------------------------------------------------------------------
consent_router = APIRouter(include_in_schema=False)


def _consent_form(member, row, client, error: str | None = None, status_code: int = 200,
                  values: dict[str, str] | None = None) -> Response:
    values = values or {}
    requested = row.params.get("scopes") or list(WIXMA_SCOPES)
    redirect = urlparse(row.params["redirect_uri"])
    scope_boxes = "".join(
        f"<label><input type=checkbox name=scopes value='{escape(s)}' checked> "
        f"<code>{escape(s)}</code> {escape(SCOPE_LABELS.get(s, ''))}</label>" for s in requested)
    tool_boxes = "".join(
        f"<label><input type=checkbox name=tools value='{escape(t)}' checked> "
        f"<code>{escape(t)}</code></label>" for t in TASKS.tools("wixma"))

    def number(name: str, label: str) -> str:
        return (f"<label>{escape(label)} <input type=number min=0 step=1 name={name} "
                f"value='{escape(values.get(name, ''))}' placeholder='no limit'></label>")

    body = (
        f"<h1>Connect {escape(grants.client_label(client))} to Wixma?</h1>{error_html(error)}"
        f"<p>Signed in as <b>{escape(member.email)}</b>. The client will act for this account "
        f"and will be sent back to <code>{escape(redirect.scheme)}://"
        f"{escape(redirect.netloc)}</code>.</p>"
        f"<form method=post action='{CONSENT_PATH}'>"
        f"{hidden('request', row.id)}{hidden('csrf_token', member.csrf_token)}"
        f"<fieldset><legend>Scopes</legend>{scope_boxes}</fieldset>"
        f"<fieldset><legend>Allowed tools</legend>{tool_boxes}</fieldset>"
        f"<fieldset><legend>Budgets (credits)</legend>"
        f"{number('monthly_budget', 'Monthly budget')}{number('total_budget', 'Total budget')}"
        f"{number('per_request_limit', 'Per-request limit')}"
        f"{number('rate_limit_per_minute', 'Calls per minute')}</fieldset>"
        f"<p class=muted>You can disconnect this client at any time in Settings.</p>"
        f"<button class=primary type=submit name=decision value=approve>Approve</button>"
        f"<button type=submit name=decision value=deny>Deny</button></form>")
    return html_page("Connect an MCP client", body, status_code)


def _optional_int(value: str, field: str) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise InvalidInput(field, "must be a whole number of zero or more")
    return int(value)


@consent_router.get(CONSENT_PATH)
def consent_page(request: Request) -> Response:
    request_id = request.query_params.get("request", "")
    member = current_member(request)
    if member is None:
        return RedirectResponse(login_url(f"{CONSENT_PATH}?request={request_id}"),
                                status_code=303)
    services = request.app.state.services
    try:
        with services.session_factory() as session:
            row, client = grants.pending_authorization(session, request_id)
    except InvalidInput as exc:
        return message_page("Authorization request", exc.message, 400)
    return _consent_form(member, row, client)


@consent_router.post(CONSENT_PATH)
def consent_decision(request: Request,
                     request_id: Annotated[str, Form(alias="request")] = "",
                     csrf_token: Annotated[str, Form()] = "",
                     decision: Annotated[str, Form()] = "",
                     scopes: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI form)
                     tools: Annotated[list[str], Form()] = [],  # noqa: B006
                     monthly_budget: Annotated[str, Form()] = "",
                     total_budget: Annotated[str, Form()] = "",
                     per_request_limit: Annotated[str, Form()] = "",
                     rate_limit_per_minute: Annotated[str, Form()] = "") -> Response:
    member = current_member(request)
    if member is None:
        return message_page("Authorization request", "Sign in again to answer this request.",
                            401)
    if not from_this_site(request):
        return message_page("Authorization request", CROSS_SITE_MESSAGE, 403)
    if not check_csrf(member, csrf_token):
        return message_page("Authorization request",
                            "The form expired; reload the page and try again.", 400)
    services = request.app.state.services
    values = {"monthly_budget": monthly_budget, "total_budget": total_budget,
              "per_request_limit": per_request_limit,
              "rate_limit_per_minute": rate_limit_per_minute}
    try:
        with transaction(services.session_factory) as session:
            if decision == "deny":
                target = grants.deny_authorization(session, request_id)
            elif decision == "approve":
                choices = grants.GrantChoices(
                    scopes=list(dict.fromkeys(scopes)),
                    tools=(None if set(TASKS.tools("wixma")) <= set(tools)
                           else list(dict.fromkeys(tools))),
                    **{name: _optional_int(value, name) for name, value in values.items()})
                if choices.tools == []:
                    raise InvalidInput("tools", "choose at least one tool")
                target = grants.approve_authorization(session, request_id, member, choices)
            else:
                raise InvalidInput("decision", "must be approve or deny")
    except InvalidInput as exc:
        with services.session_factory() as session:
            try:
                row, client = grants.pending_authorization(session, request_id)
            except InvalidInput as gone:
                return message_page("Authorization request", gone.message, 400)
        return _consent_form(member, row, client, exc.message, 400, values)
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
