"""Rendering dashboard pages: the Jinja2 templates, the pages' security headers, and the two
exception handlers the pages rely on (no sign-in → the sign-in page; a refused CSRF check → 403)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from retouch.serving.core.errors import RetouchError, Unauthorized
from retouch.serving.core.members import SignedInMember
from retouch.serving.errors import error_response

from . import csrf
from .session import SignInRequired, login_redirect

PACKAGE_DIR = Path(__file__).parent
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


@lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(PACKAGE_DIR / "templates"),
                       autoescape=select_autoescape(["html"]), trim_blocks=True,
                       lstrip_blocks=True)


def render(template: str, member: SignedInMember | None = None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(
        member=member, csrf_token=member.csrf_token if member else None, **context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def services_of(request: Request):
    return request.app.state.services


def error_status(error: RetouchError) -> int:
    return error.http_status if 400 <= error.http_status < 500 else 503


# ---- exception handlers (installed by `install_dashboard`) -------------------------------------
def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
    if _wants_json(request):
        return error_response(request, Unauthorized("Sign in to the dashboard first."))
    return login_redirect(exc.next_path)


async def csrf_rejected(request: Request, exc: csrf.CsrfRejected) -> Response:
    if _wants_json(request):
        return error_response(request, exc)
    return render("error.html", title="Request refused", message=exc.message, status_code=403)
