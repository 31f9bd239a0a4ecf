"""Wixma auth dependencies: bearer key → active key of a paid account, scope, rate limit.

`Depends(api_key("generations:create"))` gives the route the authenticated `ApiKey`, or raises
`unauthorized` / `forbidden` / `subscription_required` / `rate_limit_exceeded`. The rate-limit
headers (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`) go on the response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from retouch.serving.core import accounts, keys
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import Account, ApiKey

if TYPE_CHECKING:
    from retouch.serving.app import Services

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="WixmaApiKey", bearerFormat="wx_live_...",
                           description="A Wixma API key: `Authorization: Bearer wx_live_...`")


def get_services(request: Request) -> "Services":
    return request.app.state.services


ServicesDep = Annotated[Any, Depends(get_services)]  # a `Services` (typed loosely: no cycle)


def authenticate_request(services: "Services", secret: str | None, surface: str,
                         scope: str, response: Response) -> ApiKey:
    """The shared auth sequence of every API route (Wixma here; other surfaces reuse it)."""
    with transaction(services.session_factory) as session:
        key = keys.authenticate(session, secret, surface)
        accounts.require_paid_plan(session.get(Account, key.account_id))
    status = services.rate_limiter.hit(key.id, key.rate_limit_per_minute)
    if status is not None:
        response.headers.update(status.headers())
    keys.require_scope(key, scope)
    return key


def surface_key(bearer: HTTPBearer, surface: str, scope: str,
                name: str) -> Callable[..., ApiKey]:
    """A dependency that reads the bearer key with `bearer`, authenticates it for `surface` and
    requires `scope`; `name` prefixes the dependency's name (one per scope)."""

    def dependency(response: Response, services: ServicesDep,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
        secret = credentials.credentials if credentials is not None else None
        return authenticate_request(services, secret, surface, scope, response)

    dependency.__name__ = f"{name}_{scope.replace(':', '_')}"
    return dependency


def api_key(scope: str) -> Callable[..., ApiKey]:
    """A dependency that authenticates the Wixma key and requires `scope`."""
    return surface_key(bearer_scheme, "wixma", scope, "api_key")
