"""CSRF protection for the dashboard's signed-in forms.

Every form carries the session's own CSRF token (stored server-side with the session, see
`core.members`; compared by `serving.mcp.signin.check_csrf`), a synchronizer token a cross-site
page cannot read, so it cannot forge a POST. A POST must also come from this host when the browser
says where it came from (`Origin`, else `Referer`). The session cookie is `SameSite=Lax` besides.
The sign-in, sign-out and MCP consent forms are protected in `serving.mcp` the same way (sign-in
with a double-submit cookie), origin check included.
"""

from __future__ import annotations

from fastapi import Request

from retouch.serving.core.errors import Forbidden
from retouch.serving.core.members import SignedInMember
from retouch.serving.mcp import signin


class CsrfRejected(Forbidden):
    """A form without a valid CSRF token, or a POST from another site (answered 403)."""


def check_same_origin(request: Request) -> None:
    """A POST whose `Origin` (or `Referer`) names another host is rejected
    (`signin.from_this_site`)."""
    if not signin.from_this_site(request):
        raise CsrfRejected(signin.CROSS_SITE_MESSAGE)


def check_form_token(request: Request, member: SignedInMember, presented: str | None) -> None:
    """Raise `CsrfRejected` unless the form's token is the session's and the origin is ours."""
    check_same_origin(request)
    if not presented or not presented.isascii() or len(presented) > 200 \
            or not signin.check_csrf(member, presented):
        raise CsrfRejected("The form's security token is missing or wrong; reload the page and "
                           "try again.")
