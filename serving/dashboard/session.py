"""Who is signed in to the dashboard, as a page dependency.

Sign-in, sign-out and the session cookie belong to `serving.mcp.signin` (the MCP consent page
needs them too); this module turns its `current_member` into a dependency that sends a browser
without a session to the sign-in page, which brings it back afterwards.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from retouch.serving.core.members import SignedInMember
from retouch.serving.mcp import signin

HOME_PATH = "/dashboard/keys"


class SignInRequired(Exception):
    """Raised by `require_member` when no member is signed in; answered with a redirect."""

    def __init__(self, next_path: str):
        super().__init__(next_path)
        self.next_path = next_path


def require_member(request: Request) -> SignedInMember:
    """Dependency: the signed-in member, else `SignInRequired` (a redirect to the sign-in page)."""
    member = signin.current_member(request)
    if member is None:
        query = request.url.query
        raise SignInRequired(request.url.path + (f"?{query}" if query else ""))
    return member


Member = Annotated[SignedInMember, Depends(require_member)]


def login_redirect(next_path: str) -> RedirectResponse:
    return RedirectResponse(signin.login_url(signin.safe_next(next_path)), status_code=303)
