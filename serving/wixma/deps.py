"""Wixma auth: `Authorization: Bearer wx_live_...` keys (surface `wixma`) through the shared auth
sequence of `serving.deps` (active key of a paid account, rate limit, scope).

`Depends(api_key(WRITE))` gives the route the authenticated `ApiKey`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.security import HTTPBearer

from retouch.serving.core.tables import ApiKey
from retouch.serving.deps import surface_key

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="WixmaApiKey", bearerFormat="wx_live_...",
                           description="A Wixma API key: `Authorization: Bearer wx_live_...`")


def api_key(scope: str) -> Callable[..., ApiKey]:
    """A dependency that authenticates the Wixma key and requires `scope`."""
    return surface_key(bearer_scheme, "wixma", scope, "api_key")
