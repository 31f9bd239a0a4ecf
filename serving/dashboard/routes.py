"""Dashboard pages (`/dashboard`): Settings → API keys (create, edit, pause, resume, revoke),
connected MCP clients, and usage; the static files. Generations are in `generations`.

Server-rendered Jinja2 templates, one local stylesheet and a few lines of local JavaScript. Every
page needs a signed-in member (`session.require_member`) and shows only that member's account;
every POST carries the session's CSRF token (`csrf`). Sign-in and sign-out are
`serving.mcp.signin`'s. Routes parse the form, call core and render.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from retouch.serving.core.errors import InvalidInput, RetouchError
from retouch.serving.tasks import TASKS
from retouch.serving.core import credits, jobs, keys
from retouch.serving.core.accounts import get_account, plan_slot_limit
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.members import SignedInMember
from retouch.serving.core.tables import ApiKey

from . import csrf, forms
from .playground import PLAYGROUND_KEY_NAME
from .rendering import PACKAGE_DIR, error_status, render, services_of
from .session import HOME_PATH, Member

router = APIRouter(prefix="/dashboard", include_in_schema=False)
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript",
                "signin.css": "text/css"}  # the last for `serving.mcp.pages`


# ---- static files -----------------------------------------------------------------------------
@router.get("/static/{name}")
def static_file(name: str) -> Response:
    if name not in STATIC_FILES:
        raise InvalidInput("name", f"no file {name!r}", http_status=404)
    return FileResponse(PACKAGE_DIR / "static" / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})


# ---- pages -----------------------------------------------------------------------------------
@router.get("")
def dashboard_home() -> RedirectResponse:
    return RedirectResponse(HOME_PATH, status_code=303)


# ---- settings: API keys and connected clients -------------------------------------------------
def key_view(key: ApiKey, now) -> dict[str, Any]:
    expired = key.expires_at is not None and key.expires_at <= now
    monthly_used = key.monthly_used if key.monthly_period == jobs.budget_period(now) else 0
    return {
        "id": key.id, "name": key.name or "(unnamed)", "prefix": key.prefix,
        "status": "expired" if expired and key.status != "revoked" else key.status,
        "stored_status": key.status, "scopes": list(key.scopes or []),
        "tools": list(key.allowed_tools) if key.allowed_tools is not None else None,
        "monthly": (monthly_used, key.monthly_budget), "total": (key.total_used, key.total_budget),
        "per_request_limit": key.per_request_limit,
        "rate_limit_per_minute": key.rate_limit_per_minute, "expires_at": key.expires_at,
        "created_at": key.created_at, "last_used_at": key.last_used_at,
        "is_playground": key.name == PLAYGROUND_KEY_NAME,
    }


def _grants_module():
    """The MCP grants module, or None where the MCP surface is not part of this build."""
    try:
        from retouch.serving.mcp import grants
    except ImportError:
        return None
    return grants


def _keys_page(request: Request, member: SignedInMember, *, new_secret: str | None = None,
               new_key_id: str | None = None, error: str | None = None,
               form: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    grants = _grants_module()
    now = utcnow()
    with services_of(request).session_factory() as session:
        key_rows = [key_view(k, now) for k in keys.list_keys(session, member.account_id)
                    if k.surface == "wixma"]
        clients = None
        if grants is not None:
            clients = [{"grant_id": c.grant.id, "name": c.name, "scopes": list(c.grant.scopes),
                        "key_prefix": c.key.prefix, "created_at": c.grant.created_at,
                        "last_used_at": c.key.last_used_at}
                       for c in grants.list_connected_clients(session, member.account_id)]
    return render("keys.html", member, status_code=status_code, page="keys", keys=key_rows,
                  clients=clients, new_secret=new_secret, new_key_id=new_key_id, error=error,
                  form=form or {}, all_scopes=keys.WIXMA_SCOPES, all_tools=TASKS.tools("wixma"),
                  api_base=services_of(request).settings.resolved_public_base_url)


def _key_form(name: Annotated[str, Form()] = "",
              scopes: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
              tools: Annotated[list[str], Form()] = [],  # noqa: B006
              monthly_budget: Annotated[str, Form()] = "",
              total_budget: Annotated[str, Form()] = "",
              per_request_limit: Annotated[str, Form()] = "",
              rate_limit_per_minute: Annotated[str, Form()] = "",
              expires_at: Annotated[str, Form()] = "") -> dict[str, Any]:
    """The key form's fields as posted (create and edit): strings, scopes and tools as lists."""
    return {"name": name, "monthly_budget": monthly_budget, "total_budget": total_budget,
            "per_request_limit": per_request_limit, "rate_limit_per_minute": rate_limit_per_minute,
            "expires_at": expires_at, "scopes": scopes, "tools": tools}


KeyForm = Annotated[dict[str, Any], Depends(_key_form)]


@router.get("/keys")
def keys_page(request: Request, member: Member) -> HTMLResponse:
    return _keys_page(request, member)


@router.post("/keys")
def create_key(request: Request, member: Member, form: KeyForm,
               csrf_token: Annotated[str | None, Form()] = None) -> HTMLResponse:
    """Create a key and show its secret once (in this response only; it is not stored)."""
    csrf.check_form_token(request, member, csrf_token)
    try:
        options = forms.key_options(form, form["scopes"], form["tools"])
        if options["name"] == PLAYGROUND_KEY_NAME:
            raise InvalidInput("name", "is reserved for the dashboard playground's key")
        with transaction(services_of(request).session_factory) as session:
            key, secret = keys.create_key(session, member.account_id, surface="wixma", **options)
            key_id = key.id
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, form=form,
                          status_code=error_status(error))
    return _keys_page(request, member, new_secret=secret, new_key_id=key_id)


def _owned_key(session, member: SignedInMember, key_id: str) -> ApiKey:
    """One of the member's account's keys that can still be changed, else the field's error."""
    key = keys.get_key(session, key_id, account_id=member.account_id)  # NotFound elsewhere
    if key.status == "revoked":
        raise InvalidInput("status", "a revoked key cannot be changed; create a new key")
    return key


@router.get("/keys/{key_id}/edit")
def edit_key_page(request: Request, member: Member, key_id: str) -> HTMLResponse:
    try:
        with services_of(request).session_factory() as session:
            key = _owned_key(session, member, key_id)
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, status_code=error_status(error))
    return _edit_page(member, key, forms.key_form(key))


def _edit_page(member: SignedInMember, key: ApiKey, form: dict[str, Any], *,
               error: str | None = None, status_code: int = 200) -> HTMLResponse:
    return render("key_edit.html", member, page="keys", key=key, form=form, error=error,
                  status_code=status_code, all_scopes=keys.WIXMA_SCOPES,
                  all_tools=TASKS.tools("wixma"))


@router.post("/keys/{key_id}/edit")
def edit_key(request: Request, member: Member, key_id: str, form: KeyForm,
             csrf_token: Annotated[str | None, Form()] = None) -> Response:
    """Change a key's name, scopes, tools, budgets, rate limit or expiry (its secret stays)."""
    csrf.check_form_token(request, member, csrf_token)
    services = services_of(request)
    try:
        with transaction(services.session_factory) as session:
            key = _owned_key(session, member, key_id)
            options = forms.key_options(form, form["scopes"], form["tools"])
            if key.name == PLAYGROUND_KEY_NAME:
                options["name"] = PLAYGROUND_KEY_NAME  # the playground finds its key by name
            elif options["name"] == PLAYGROUND_KEY_NAME:
                raise InvalidInput("name", "is reserved for the dashboard playground's key")
            key.name, key.scopes, key.allowed_tools = (options["name"], options["scopes"],
                                                      options["tools"])
            for column in ("monthly_budget", "total_budget", "per_request_limit",
                           "rate_limit_per_minute", "expires_at"):
                setattr(key, column, options[column])
    except RetouchError as error:
        with services.session_factory() as session:
            key = session.get(ApiKey, key_id)
            if key is None or key.account_id != member.account_id:
                return _keys_page(request, member, error=error.message,
                                  status_code=error_status(error))
        return _edit_page(member, key, form, error=error.message,
                          status_code=error_status(error))
    return RedirectResponse(f"{HOME_PATH}#key-{key_id}", status_code=303)


KEY_ACTIONS = {"pause": "paused", "resume": "active", "revoke": "revoked"}


@router.post("/keys/{key_id}/{action}")
def change_key_status(request: Request, member: Member, key_id: str, action: str,
                      csrf_token: Annotated[str | None, Form()] = None) -> Response:
    """Pause, resume or revoke one of the account's keys."""
    csrf.check_form_token(request, member, csrf_token)
    try:
        if action not in KEY_ACTIONS:
            raise InvalidInput("action", f"must be one of {', '.join(KEY_ACTIONS)}",
                               http_status=404)
        with transaction(services_of(request).session_factory) as session:
            keys.get_key(session, key_id, account_id=member.account_id)  # NotFound elsewhere
            keys.set_key_status(session, key_id, KEY_ACTIONS[action])
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, status_code=error_status(error))
    return RedirectResponse(f"{HOME_PATH}#key-{key_id}", status_code=303)


@router.post("/clients/{grant_id}/revoke")
def revoke_client(request: Request, member: Member, grant_id: str,
                  csrf_token: Annotated[str | None, Form()] = None) -> Response:
    """Disconnect an MCP client: its grant, key and tokens are revoked."""
    csrf.check_form_token(request, member, csrf_token)
    grants = _grants_module()
    try:
        if grants is None:
            raise InvalidInput("grant_id", "connected clients are not available", http_status=404)
        with transaction(services_of(request).session_factory) as session:
            grants.revoke_grant(session, grant_id, account_id=member.account_id)
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, status_code=error_status(error))
    return RedirectResponse(f"{HOME_PATH}#clients", status_code=303)


# ---- usage ------------------------------------------------------------------------------------
@router.get("/usage")
def usage_page(request: Request, member: Member) -> HTMLResponse:
    """Credit balance, the plan's active slots, and every key's budget use."""
    with services_of(request).session_factory() as session:
        account = get_account(session, member.account_id)
        key_usage = [(key, credits.credit_summary(session, key)["key"])
                     for key in keys.list_keys(session, member.account_id)
                     if key.surface == "wixma" and key.status != "revoked"]
        account_view = {"balance": account.credit_balance, "plan": account.plan,
                        "active_slots": account.active_slots,
                        "slot_limit": plan_slot_limit(account.plan)}
        rows = [{"id": key.id, "name": key.name or "(unnamed)", "prefix": key.prefix,
                 "status": key.status, **usage} for key, usage in key_usage]
    return render("usage.html", member, page="usage", account=account_view, keys=rows)
