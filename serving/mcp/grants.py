"""OAuth 2.1 state for MCP clients: registered clients, pending authorizations, grants, codes and
tokens (synchronous, one SQLAlchemy session per call; the caller commits).

A grant is a member's approval of one client. It owns a dedicated Wixma API key (named
"MCP: <client>") carrying the scopes, allowed tools, budgets and rate limit the member chose, so
a client's tool calls pass exactly the checks an API key's calls pass. Access and refresh tokens
point at the grant; revoking the grant revokes its key and every token. Codes and tokens are
random 256-bit strings stored only as SHA-256 (as API key secrets are, see `core.keys`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse, parse_qsl

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from retouch.serving.core.errors import InvalidInput, NotFound
from retouch.serving.core import keys
from retouch.serving.core.db import utcnow
from retouch.serving.core.members import SignedInMember
from retouch.serving.core.tables import (ApiKey, OAuthAuthorizationRequest, OAuthClient,
                                         OAuthCode, OAuthGrant, OAuthToken)

ACCESS_TOKEN_TTL = timedelta(hours=1)
REFRESH_TOKEN_TTL = timedelta(days=30)
CODE_TTL = timedelta(minutes=5)
AUTHORIZATION_REQUEST_TTL = timedelta(minutes=15)
EXPIRED_KEPT_FOR = timedelta(days=1)  # expired rows are deleted after this
ACCESS_TOKEN_PREFIX = "wxo_at_"
REFRESH_TOKEN_PREFIX = "wxo_rt_"
CODE_PREFIX = "wxo_code_"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def with_query(url: str, **params: str | None) -> str:
    """`url` with `params` added to its query string (None values left out)."""
    parsed = urlparse(url)
    query = parse_qsl(parsed.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunparse(parsed._replace(query=urlencode(query)))


# ---- clients ----------------------------------------------------------------------------------
def register_client(session: Session, client_id: str, registration: dict[str, Any],
                    client_secret: str | None) -> OAuthClient:
    """Store a registered client; `registration` is its metadata without the secret."""
    registration = {k: v for k, v in registration.items() if k != "client_secret"}
    client = OAuthClient(id=client_id, client_name=(registration.get("client_name") or None),
                         secret_hash=_digest(client_secret) if client_secret else None,
                         registration=registration)
    session.add(client)
    session.flush()
    return client


def get_client(session: Session, client_id: str) -> OAuthClient | None:
    return session.get(OAuthClient, client_id) if client_id and len(client_id) <= 64 else None


def client_secret_matches(client: OAuthClient, presented: str | None) -> bool:
    """Constant-time check of a presented client secret against the stored hash."""
    if client.secret_hash is None:
        return True
    return bool(presented) and secrets.compare_digest(_digest(presented), client.secret_hash)


def client_label(client: OAuthClient) -> str:
    return (client.client_name or "").strip()[:80] or f"client {client.id[:8]}"


# ---- authorization requests -------------------------------------------------------------------
def create_authorization_request(session: Session, client_id: str,
                                 params: dict[str, Any]) -> str:
    """Remember a validated authorize request; returns the id the consent page is opened with.

    `params`: redirect_uri, redirect_uri_provided_explicitly, state, scopes, code_challenge,
    resource (all JSON values).
    """
    purge_expired(session)
    request_id = secrets.token_urlsafe(24)
    session.add(OAuthAuthorizationRequest(id=request_id, client_id=client_id, params=params,
                                          expires_at=utcnow() + AUTHORIZATION_REQUEST_TTL))
    session.flush()
    return request_id


def pending_authorization(session: Session, request_id: str
                          ) -> tuple[OAuthAuthorizationRequest, OAuthClient]:
    """The open authorize request and its client, or `InvalidInput` (unknown, used, expired)."""
    row = session.get(OAuthAuthorizationRequest, request_id) if request_id else None
    if row is None or row.completed_at is not None or row.expires_at <= utcnow():
        raise InvalidInput("request", "this authorization request is unknown, finished or "
                                      "expired; start the connection from your MCP client again")
    return row, session.get_one(OAuthClient, row.client_id)


@dataclass(frozen=True)
class GrantChoices:
    """What the member allows the client: the grant key's settings (None: no limit / all)."""

    scopes: list[str]
    tools: list[str] | None = None
    monthly_budget: int | None = None
    total_budget: int | None = None
    per_request_limit: int | None = None
    rate_limit_per_minute: int | None = None


def _finish(session: Session, request_id: str) -> OAuthAuthorizationRequest:
    """Mark the request finished exactly once (a double-submitted form cannot mint two codes)."""
    row, _ = pending_authorization(session, request_id)
    done = session.execute(update(OAuthAuthorizationRequest)
                           .where(OAuthAuthorizationRequest.id == request_id,
                                  OAuthAuthorizationRequest.completed_at.is_(None))
                           .values(completed_at=utcnow()).execution_options(
                               synchronize_session=False))
    if done.rowcount != 1:
        raise InvalidInput("request", "this authorization request was already answered")
    return row


def approve_authorization(session: Session, request_id: str, member: SignedInMember,
                          choices: GrantChoices) -> str:
    """Create the grant (with its dedicated key) and a one-time code; returns the URL to send
    the browser back to the client with `code` and `state`."""
    requested = pending_authorization(session, request_id)[0].params.get("scopes") \
        or list(keys.WIXMA_SCOPES)
    if not choices.scopes:
        raise InvalidInput("scopes", "choose at least one scope")
    for scope in choices.scopes:
        if scope not in requested:
            raise InvalidInput("scopes", f"{scope!r} was not requested by the client")
    row = _finish(session, request_id)
    client = session.get_one(OAuthClient, row.client_id)
    # One connection per client registration and account: approving again replaces the old one.
    for previous in session.scalars(select(OAuthGrant.id).where(
            OAuthGrant.client_id == client.id, OAuthGrant.account_id == member.account_id,
            OAuthGrant.status == "active")).all():
        revoke_grant(session, previous)
    key, _unused_secret = keys.create_key(
        session, member.account_id, surface="wixma", name=f"MCP: {client_label(client)}",
        scopes=choices.scopes, tools=choices.tools, monthly_budget=choices.monthly_budget,
        total_budget=choices.total_budget, per_request_limit=choices.per_request_limit,
        rate_limit_per_minute=choices.rate_limit_per_minute)
    params = row.params
    grant = OAuthGrant(account_id=member.account_id, member_id=member.member_id,
                       client_id=client.id, api_key_id=key.id, scopes=list(key.scopes),
                       resource=params.get("resource"), status="active")
    session.add(grant)
    session.flush()
    code = _new_secret(CODE_PREFIX)
    session.add(OAuthCode(code_hash=_digest(code), grant_id=grant.id, client_id=client.id,
                          code_challenge=params["code_challenge"],
                          redirect_uri=params["redirect_uri"],
                          redirect_uri_provided_explicitly=params.get(
                              "redirect_uri_provided_explicitly", True),
                          scopes=list(key.scopes), resource=params.get("resource"),
                          expires_at=utcnow() + CODE_TTL))
    session.flush()
    return with_query(params["redirect_uri"], code=code, state=params.get("state"))


def deny_authorization(session: Session, request_id: str) -> str:
    """Close the request; returns the client redirect carrying `error=access_denied`."""
    row = _finish(session, request_id)
    return with_query(row.params["redirect_uri"], error="access_denied",
                      error_description="The request was denied.",
                      state=row.params.get("state"))


# ---- codes and tokens -------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    scopes: list[str]


def find_code(session: Session, client_id: str, code: str) -> OAuthCode | None:
    """An unused code issued to this client (expiry is checked by the caller)."""
    row = session.get(OAuthCode, _digest(code)) if code and len(code) <= 200 else None
    if row is None or row.client_id != client_id:
        return None
    if row.used_at is not None:
        # A replayed code: the first redemption may have been stolen, so end the grant.
        revoke_grant(session, row.grant_id)
        return None
    return row


def _issue_tokens(session: Session, grant: OAuthGrant, scopes: list[str],
                  resource: str | None) -> TokenPair:
    now = utcnow()
    access, refresh = _new_secret(ACCESS_TOKEN_PREFIX), _new_secret(REFRESH_TOKEN_PREFIX)
    session.add_all([
        OAuthToken(token_hash=_digest(access), kind="access", grant_id=grant.id,
                   client_id=grant.client_id, scopes=scopes, resource=resource,
                   created_at=now, expires_at=now + ACCESS_TOKEN_TTL),
        OAuthToken(token_hash=_digest(refresh), kind="refresh", grant_id=grant.id,
                   client_id=grant.client_id, scopes=scopes, resource=resource,
                   created_at=now, expires_at=now + REFRESH_TOKEN_TTL),
    ])
    session.flush()
    return TokenPair(access, refresh, int(ACCESS_TOKEN_TTL.total_seconds()), scopes)


def exchange_code(session: Session, client_id: str, code: str) -> TokenPair | None:
    """Redeem a code once (a conditional UPDATE); None when it is unknown, used or expired."""
    now = utcnow()
    code_hash = _digest(code)
    used = session.execute(update(OAuthCode)
                           .where(OAuthCode.code_hash == code_hash, OAuthCode.client_id == client_id,
                                  OAuthCode.used_at.is_(None), OAuthCode.expires_at > now)
                           .values(used_at=now).execution_options(synchronize_session=False))
    if used.rowcount != 1:
        return None
    row = session.get_one(OAuthCode, code_hash)
    grant = session.get_one(OAuthGrant, row.grant_id)
    if grant.status != "active":
        return None
    return _issue_tokens(session, grant, list(row.scopes), row.resource)


def _active_token(session: Session, token: str, kind: str) -> tuple[OAuthToken, OAuthGrant] | None:
    if not token or len(token) > 200:
        return None
    token_hash = _digest(token)
    row = session.get(OAuthToken, token_hash)
    if row is None or not keys.hash_matches(row.token_hash, token_hash) or row.kind != kind:
        return None
    grant = session.get_one(OAuthGrant, row.grant_id)
    if row.revoked_at is not None or row.expires_at <= utcnow() or grant.status != "active":
        return None
    return row, grant


def find_refresh_token(session: Session, client_id: str, token: str) -> OAuthToken | None:
    """A live refresh token of this client. Presenting one that was already rotated away
    revokes the grant: one of its two holders is not the client it was issued to."""
    row = session.get(OAuthToken, _digest(token)) if token and len(token) <= 200 else None
    if row is None or row.kind != "refresh" or row.client_id != client_id:
        return None
    if row.revoked_at is not None:
        revoke_grant(session, row.grant_id)
        return None
    found = _active_token(session, token, "refresh")
    return found[0] if found else None


def rotate_refresh_token(session: Session, client_id: str, token: str,
                         scopes: list[str]) -> TokenPair | None:
    """Spend a refresh token (once) for a new access + refresh pair with `scopes` (a subset)."""
    found = _active_token(session, token, "refresh")
    if found is None or found[0].client_id != client_id:
        return None
    row, grant = found
    spent = session.execute(update(OAuthToken)
                            .where(OAuthToken.token_hash == row.token_hash,
                                   OAuthToken.revoked_at.is_(None))
                            .values(revoked_at=utcnow()).execution_options(
                                synchronize_session=False))
    if spent.rowcount != 1:
        return None
    scopes = [s for s in scopes if s in row.scopes] or list(row.scopes)
    return _issue_tokens(session, grant, scopes, row.resource)


# ---- who is calling ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """The API key behind a bearer credential, and what the credential itself allows."""

    api_key_id: str
    client_id: str
    scopes: list[str]
    expires_at: datetime | None
    resource: str | None = None
    grant_id: str | None = None


def caller_for_bearer(session: Session, credential: str) -> Caller | None:
    """Identify an MCP bearer credential: a Wixma API key (`wx_live_...`) or an OAuth access
    token. None for unknown credentials and for expired or revoked OAuth tokens (the client gets
    401 and signs in again). A known `wx_live_` key is identified whatever its status: a paused,
    expired or revoked key is answered `forbidden` (with `details.reason`) per call, exactly as
    over HTTP."""
    if not credential or len(credential) > 200:
        return None
    if credential.startswith(keys.SECRET_PREFIXES["wixma"]):
        secret_hash = keys.hash_secret(credential)
        key = session.scalars(select(ApiKey).where(ApiKey.secret_hash == secret_hash)).first()
        if key is None or not keys.hash_matches(key.secret_hash, secret_hash) \
                or key.surface != "wixma":
            return None
        # No status or expiry here: the per-call checks answer `forbidden`, as over HTTP.
        return Caller(api_key_id=key.id, client_id=f"api-key:{key.id}",
                      scopes=list(key.scopes or []), expires_at=None)
    if not credential.startswith(ACCESS_TOKEN_PREFIX):
        return None
    found = _active_token(session, credential, "access")
    if found is None:
        return None
    row, grant = found
    return Caller(api_key_id=grant.api_key_id, client_id=row.client_id, scopes=list(row.scopes),
                  expires_at=row.expires_at, resource=row.resource, grant_id=grant.id)


def purge_expired(session: Session) -> None:
    """Delete authorization requests, codes and tokens that can no longer be used (run on each
    new authorization, so the tables stay small without a scheduler)."""
    now = utcnow()
    for table, column in ((OAuthAuthorizationRequest, OAuthAuthorizationRequest.expires_at),
                          (OAuthCode, OAuthCode.expires_at), (OAuthToken, OAuthToken.expires_at)):
        session.execute(delete(table).where(column < now - EXPIRED_KEPT_FOR)
                        .execution_options(synchronize_session=False))


# ---- revocation and listing -------------------------------------------------------------------
def revoke_token(session: Session, client_id: str, token: str) -> None:
    """RFC 7009 revocation by the client: ends the whole grant (key and tokens). Unknown tokens
    and tokens of other clients are ignored, as the RFC asks."""
    row = session.get(OAuthToken, _digest(token)) if token and len(token) <= 200 else None
    if row is not None and row.client_id == client_id:
        revoke_grant(session, row.grant_id)


def revoke_grant(session: Session, grant_id: str, *, account_id: str | None = None) -> OAuthGrant:
    """Disconnect a client: the grant, its API key and all its tokens are revoked."""
    grant = session.get(OAuthGrant, grant_id)
    if grant is None or (account_id is not None and grant.account_id != account_id):
        raise NotFound("grant_id", f"connected client {grant_id!r} does not exist")
    now = utcnow()
    if grant.status != "revoked":
        grant.status, grant.revoked_at = "revoked", now
    session.execute(update(ApiKey).where(ApiKey.id == grant.api_key_id)
                    .values(status="revoked").execution_options(synchronize_session=False))
    session.execute(update(OAuthToken).where(OAuthToken.grant_id == grant.id,
                                             OAuthToken.revoked_at.is_(None))
                    .values(revoked_at=now).execution_options(synchronize_session=False))
    session.flush()
    return grant


@dataclass(frozen=True)
class ConnectedClient:
    grant: OAuthGrant
    client: OAuthClient
    key: ApiKey

    @property
    def name(self) -> str:
        return client_label(self.client)


def list_connected_clients(session: Session, account_id: str, *,
                           statuses: Iterable[str] = ("active",)) -> list[ConnectedClient]:
    """An account's MCP grants (active by default), newest first, with client and key."""
    rows = session.execute(
        select(OAuthGrant, OAuthClient, ApiKey)
        .join(OAuthClient, OAuthClient.id == OAuthGrant.client_id)
        .join(ApiKey, ApiKey.id == OAuthGrant.api_key_id)
        .where(OAuthGrant.account_id == account_id, OAuthGrant.status.in_(tuple(statuses)))
        .order_by(OAuthGrant.created_at.desc(), OAuthGrant.id.desc())).all()
    return [ConnectedClient(grant, client, key) for grant, client, key in rows]
