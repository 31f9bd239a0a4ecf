"""What every API surface's routes depend on: the services, the auth sequence and the scopes.

`surface_key(bearer, surface, scope, name)` builds a dependency that gives the route the
authenticated `ApiKey` (active key of a paid account, for that surface, with that scope, rate
limited), or raises `unauthorized` / `forbidden` / `subscription_required` /
`rate_limit_exceeded`. The rate-limit headers (`RateLimit-Limit`, `RateLimit-Remaining`,
`RateLimit-Reset`) go on the response. Each surface names its own bearer scheme (`wixma.deps`,
`aixpose.deps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from .core import keys
from .core.db import transaction
from .core.tables import ApiKey
from .services import Services

# The scopes an API key can carry (both surfaces; `core.keys` grants them).
READ, WRITE, UPLOAD, CREDITS = ("generations:read", "generations:create", "uploads:create",
                                "credits:read")


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def authenticate_request(services: Services, secret: str | None, surface: str,
                         scope: str, response: Response) -> ApiKey:
    """The shared auth sequence of every API route: a read (no write lock; none at all for a key
    verified moments ago, `keys.VERIFIED_KEYS`), plus a write once a minute per key to record
    `last_used_at`."""
    key = keys.authenticate_cached(services.session_factory, secret, surface)
    if keys.touch_due(key):
        with transaction(services.session_factory) as session:
            fresh = keys.ensure_key_usable(session, session.get_one(ApiKey, key.id))
        key.last_used_at = fresh.last_used_at
        keys.VERIFIED_KEYS.put(keys.hash_secret(secret), key)
    return _rate_limited_with_scope(services, key, scope, response)


def _rate_limited_with_scope(services: Services, key: ApiKey, scope: str,
                             response: Response) -> ApiKey:
    status = services.rate_limiter.hit(key.id, key.rate_limit_per_minute)
    if status is not None:
        response.headers.update(status.headers())
    keys.require_scope(key, scope)
    return key


def surface_key(bearer: HTTPBearer, surface: str, scope: str,
                name: str) -> Callable[..., ApiKey]:
    """A dependency that reads the bearer key with `bearer`, authenticates it for `surface` and
    requires `scope`; `name` prefixes the dependency's name (one per scope)."""

    async def dependency(response: Response, services: ServicesDep,
                         credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                         ) -> ApiKey:
        secret = credentials.credentials if credentials is not None else None
        if services.rate_limiter.in_memory:
            # A key verified moments ago needs no I/O at all: stay on the event loop.
            key = keys.cached_key(secret, surface)
            if key is not None and not keys.touch_due(key):
                return _rate_limited_with_scope(services, key, scope, response)
        return await run_in_threadpool(authenticate_request, services, secret, surface, scope,
                                       response)

    dependency.__name__ = f"{name}_{scope.replace(':', '_')}"
    return dependency
