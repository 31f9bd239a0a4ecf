"""AIXpose auth and shared dependencies: `Authorization: Bearer aix_live_...` keys (surface
`aixpose`) through the shared auth sequence of `serving.deps` (active key, paid plan, rate limit,
scope). AIXpose keys carry the same scopes as Wixma: reads, writes (projects, enhancements),
uploads, credits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header
from fastapi.security import HTTPBearer

from retouch.serving.core.tables import ApiKey
from retouch.serving.core.webhook_outbox import check_webhook_url as vet_webhook_url
from retouch.serving.deps import surface_key
from retouch.serving.errors import error_responses

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="AIXposeApiKey",
                           bearerFormat="aix_live_...",
                           description="An AIXpose API key: `Authorization: Bearer aix_live_...`")

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]

# Every route authenticates (401, 402, 403, 429, 503) and refuses a malformed parameter or header
# with 400 (a NUL anywhere, a bad `Idempotency-Key`).
AUTH_ERRORS = (400, 401, 402, 403, 429, 503)


def responses(*statuses: int, replay: type | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for an AIXpose route: the errors it can answer (the shared error
    shape), and for a creating route the 200 of an idempotent replay (same `Idempotency-Key` and
    body), whose body is `replay`, the route's own response model."""
    documented = error_responses(*AUTH_ERRORS, *statuses)
    if replay is None:
        return documented
    return {200: {"model": replay, "description": "Idempotent replay (same `Idempotency-Key` "
                                                   "and body): the existing resource"},
            **documented}


def aixpose_key(scope: str) -> Callable[..., ApiKey]:
    """A dependency that authenticates the AIXpose key and requires `scope`."""
    return surface_key(bearer_scheme, "aixpose", scope, "aixpose_key")


def model_revision(settings) -> str:
    """The diffusion model an enhancement ran on, e.g. `sdxl:stabilityai/...-base-1.0@<rev>`."""
    from retouch.models.registry import TINY_PREFIX, resolve_profile

    profile = resolve_profile(settings.profile, settings.model_overrides)
    spec = profile.spec("base")
    source = spec.source.removeprefix(TINY_PREFIX)
    return f"{profile.name}:{source}" + (f"@{spec.revision}" if spec.revision else "")


def check_webhook_url(url: str | None, services, field: str = "webhook_url") -> str | None:
    """A webhook URL under the image URL rules (SSRF-safe: public https hosts; loopback only with
    private URLs allowed), or None."""
    return vet_webhook_url(services.fetcher, url, field)
