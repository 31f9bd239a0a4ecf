"""The web dashboard (`/dashboard`): API key settings, connected MCP clients, usage, and
generations with a playground covering every tool, and the AIXpose projects (pictures with
their lineage, approval, videos). Sign-in and sign-out are `serving.mcp.signin`'s pages.

`install_dashboard(app)` adds the pages and the two exception handlers they rely on (a missing
sign-in becomes a redirect to the sign-in page; a refused CSRF check a 403 page).
"""

from __future__ import annotations

from fastapi import FastAPI

from .csrf import CsrfRejected
from .generations import router as generations_router
from .projects import router as projects_router
from .rendering import csrf_rejected, sign_in_required
from .routes import router
from .session import SignInRequired, require_member


def install_dashboard(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(generations_router)
    app.include_router(projects_router)
    app.add_exception_handler(SignInRequired, sign_in_required)
    app.add_exception_handler(CsrfRejected, csrf_rejected)


__all__ = ["install_dashboard", "require_member", "router"]
