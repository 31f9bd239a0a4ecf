"""Dashboard sign-in: `/dashboard/login` (form), `/dashboard/logout`, and the `current_member`
dependency the consent page (and later the dashboard pages) use.

The session cookie is HttpOnly, SameSite=Lax, and Secure whenever the public URL is HTTPS. The
sign-in form is protected by a double-submit CSRF cookie; forms of signed-in pages carry the
session's own CSRF token (`SignedInMember.csrf_token`, checked with `check_csrf`). Every form
POST sent from another site (`Origin`, else `Referer`; `from_this_site`) is refused with 403.
Sign-in attempts are rate-limited per e-mail address.
"""

from __future__ import annotations

import secrets
from html import escape
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from retouch.serving.core.errors import RateLimitExceeded, Unauthorized
from retouch.serving.core import members
from retouch.serving.core.db import transaction
from retouch.serving.core.members import SignedInMember

from .pages import error_html, hidden, html_page, message_page

SESSION_COOKIE = "retouch_session"
LOGIN_CSRF_COOKIE = "retouch_login_csrf"
LOGIN_PATH = "/dashboard/login"
DEFAULT_AFTER_LOGIN = "/dashboard"
LOGIN_ATTEMPTS_PER_MINUTE = 10

router = APIRouter(include_in_schema=False)


def _services(request: Request):
    return request.app.state.services


def current_member(request: Request) -> SignedInMember | None:
    """The signed-in member of this request (from the session cookie), or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    with _services(request).session_factory() as session:
        return members.signed_in_member(session, token)


def check_csrf(member: SignedInMember, presented: str | None) -> bool:
    return bool(presented) and secrets.compare_digest(presented, member.csrf_token)


CROSS_SITE_MESSAGE = "This form was sent from another site."


def from_this_site(request: Request) -> bool:
    """False when the browser says (`Origin`, else `Referer`) that a form came from another
    host; browsers that send neither are left to the token check. Hosts are compared, not
    schemes, so a TLS-terminating proxy in front of the app does not break the check."""
    source = request.headers.get("origin") or request.headers.get("referer")
    return not source or (source != "null" and urlsplit(source).netloc == request.url.netloc)


def safe_next(target: str | None) -> str:
    """Only local paths are followed after sign-in (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return DEFAULT_AFTER_LOGIN
    return target


def login_url(next_path: str) -> str:
    return f"{LOGIN_PATH}?{urlencode({'next': next_path})}"


def secure_cookies(request: Request) -> bool:
    public = _services(request).settings.resolved_public_base_url
    return public.startswith("https://") or request.url.scheme == "https"


def _login_form(next_path: str, csrf: str, email: str = "", error: str | None = None,
                status_code: int = 200) -> Response:
    body = (f"<h1>Sign in to Wixma</h1>{error_html(error)}"
            f"<form method=post action='{LOGIN_PATH}'>"
            f"{hidden('csrf_token', csrf)}{hidden('next', next_path)}"
            f"<label>E-mail <input type=email name=email required autocomplete=username "
            f"value='{escape(email)}'></label>"
            f"<label>Password <input type=password name=password required "
            f"autocomplete=current-password></label>"
            f"<p><button class=primary type=submit>Sign in</button></p></form>")
    return html_page("Sign in", body, status_code)


def _with_login_csrf(request: Request, response: Response, csrf: str) -> Response:
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="lax",
                        secure=secure_cookies(request), path=LOGIN_PATH)
    return response


@router.get(LOGIN_PATH)
def login_page(request: Request, next: str | None = None) -> Response:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    return _with_login_csrf(request, _login_form(safe_next(next), csrf), csrf)


@router.post(LOGIN_PATH)
def login(request: Request, email: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "") -> Response:
    if not from_this_site(request):  # login CSRF: signing a browser in to another's account
        return message_page("Sign in", CROSS_SITE_MESSAGE, 403)
    next_path = safe_next(next)
    cookie_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    if not cookie_csrf or not secrets.compare_digest(cookie_csrf, csrf_token):
        fresh = secrets.token_urlsafe(32)
        return _with_login_csrf(request, _login_form(
            next_path, fresh, email, "The form expired; please sign in again.", 400), fresh)
    services = _services(request)
    try:
        services.rate_limiter.hit(f"login:{email.strip().lower()}", LOGIN_ATTEMPTS_PER_MINUTE)
        with transaction(services.session_factory) as session:
            member = members.verify_credentials(session, email, password)
            _, token = members.start_session(session, member)
    except (Unauthorized, RateLimitExceeded) as exc:
        status = 429 if isinstance(exc, RateLimitExceeded) else 401
        return _login_form(next_path, cookie_csrf, email, exc.message, status)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                        secure=secure_cookies(request), path="/",
                        max_age=int(members.SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
    return response


@router.post("/dashboard/logout")
def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    member = current_member(request)
    if member is None:
        return RedirectResponse(LOGIN_PATH, status_code=303)
    if not from_this_site(request):
        return message_page("Sign out", CROSS_SITE_MESSAGE, 403)
    if not check_csrf(member, csrf_token):
        return message_page("Sign out", "The form expired; reload the page and try again.", 400)
    with transaction(_services(request).session_factory) as session:
        members.end_session(session, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
