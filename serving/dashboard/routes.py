"""Dashboard pages (`/dashboard`): sign-in, API key settings, usage, generations and playground.

Server-rendered Jinja2 templates, one local stylesheet and a few lines of local JavaScript. Every
page needs a signed-in member (`session.current_member`) and shows only that member's account;
every POST carries the session's CSRF token (`csrf`). Sign-in and sign-out are
`serving.mcp.signin`'s. Routes parse the form, call core and render.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from retouch.pipelines.errors import InvalidInput, RetouchError, Unauthorized
from retouch.pipelines.requests import parse_generation_request
from retouch.pipelines.vocabulary import (ANGLES, ASPECT_RATIOS, MAX_IMAGE_BYTES,
                                          PHOTOGRAPHER_MODES, QUALITIES, SEASONS, TIMES, TOOLS,
                                          UPSCALE_SCALES, WEATHERS)
from retouch.serving.core import credits, jobs, keys
from retouch.serving.core.accounts import get_account, plan_slot_limit
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.image_refs import store_upload, validate_image_bytes
from retouch.serving.core.members import SignedInMember
from retouch.serving.core.submissions import submit_generation
from retouch.serving.core.tables import ApiKey, Generation
from retouch.serving.errors import error_response

from . import csrf, forms
from .playground import PLAYGROUND_KEY_NAME, playground_key
from .session import HOME_PATH, Member, SignInRequired, login_redirect

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PACKAGE_DIR = Path(__file__).parent
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
GALLERY_SIZE = 24


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


def _services(request: Request):
    return request.app.state.services


def _error_status(error: RetouchError) -> int:
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


# ---- static files -----------------------------------------------------------------------------
@router.get("/static/{name}")
def static_file(name: str) -> Response:
    if name not in STATIC_FILES:
        raise InvalidInput("name", f"no file {name!r}", http_status=404)
    return FileResponse(PACKAGE_DIR / "static" / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=3600"})


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
    with _services(request).session_factory() as session:
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
                  form=form or {}, all_scopes=keys.WIXMA_SCOPES, all_tools=TOOLS,
                  api_base=_services(request).settings.resolved_public_base_url)


@router.get("/keys")
def keys_page(request: Request, member: Member) -> HTMLResponse:
    return _keys_page(request, member)


@router.post("/keys")
def create_key(request: Request, member: Member,
               csrf_token: Annotated[str | None, Form()] = None,
               name: Annotated[str, Form()] = "",
               scopes: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
               tools: Annotated[list[str], Form()] = [],  # noqa: B006
               monthly_budget: Annotated[str, Form()] = "",
               total_budget: Annotated[str, Form()] = "",
               per_request_limit: Annotated[str, Form()] = "",
               rate_limit_per_minute: Annotated[str, Form()] = "",
               expires_at: Annotated[str, Form()] = "") -> HTMLResponse:
    """Create a key and show its secret once (in this response only; it is not stored)."""
    csrf.check_form_token(request, member, csrf_token)
    form = {"name": name, "monthly_budget": monthly_budget, "total_budget": total_budget,
            "per_request_limit": per_request_limit, "rate_limit_per_minute": rate_limit_per_minute,
            "expires_at": expires_at, "scopes": scopes, "tools": tools}
    try:
        options = forms.key_options(form, scopes, tools)
        if options["name"] == PLAYGROUND_KEY_NAME:
            raise InvalidInput("name", "is reserved for the dashboard playground's key")
        with transaction(_services(request).session_factory) as session:
            key, secret = keys.create_key(session, member.account_id, surface="wixma", **options)
            key_id = key.id
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, form=form,
                          status_code=_error_status(error))
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
        with _services(request).session_factory() as session:
            key = _owned_key(session, member, key_id)
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, status_code=_error_status(error))
    return _edit_page(member, key, forms.key_form(key))


def _edit_page(member: SignedInMember, key: ApiKey, form: dict[str, Any], *,
               error: str | None = None, status_code: int = 200) -> HTMLResponse:
    return render("key_edit.html", member, page="keys", key=key, form=form, error=error,
                  status_code=status_code, all_scopes=keys.WIXMA_SCOPES, all_tools=TOOLS)


@router.post("/keys/{key_id}/edit")
def edit_key(request: Request, member: Member, key_id: str,
             csrf_token: Annotated[str | None, Form()] = None,
             name: Annotated[str, Form()] = "",
             scopes: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
             tools: Annotated[list[str], Form()] = [],  # noqa: B006
             monthly_budget: Annotated[str, Form()] = "",
             total_budget: Annotated[str, Form()] = "",
             per_request_limit: Annotated[str, Form()] = "",
             rate_limit_per_minute: Annotated[str, Form()] = "",
             expires_at: Annotated[str, Form()] = "") -> Response:
    """Change a key's name, scopes, tools, budgets, rate limit or expiry (its secret stays)."""
    csrf.check_form_token(request, member, csrf_token)
    form = {"name": name, "monthly_budget": monthly_budget, "total_budget": total_budget,
            "per_request_limit": per_request_limit, "rate_limit_per_minute": rate_limit_per_minute,
            "expires_at": expires_at, "scopes": scopes, "tools": tools}
    services = _services(request)
    try:
        with transaction(services.session_factory) as session:
            key = _owned_key(session, member, key_id)
            options = forms.key_options(form, scopes, tools)
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
                                  status_code=_error_status(error))
        return _edit_page(member, key, form, error=error.message,
                          status_code=_error_status(error))
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
        with transaction(_services(request).session_factory) as session:
            keys.get_key(session, key_id, account_id=member.account_id)  # NotFound elsewhere
            keys.set_key_status(session, key_id, KEY_ACTIONS[action])
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, status_code=_error_status(error))
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
        with transaction(_services(request).session_factory) as session:
            grants.revoke_grant(session, grant_id, account_id=member.account_id)
    except RetouchError as error:
        return _keys_page(request, member, error=error.message, status_code=_error_status(error))
    return RedirectResponse(f"{HOME_PATH}#clients", status_code=303)


# ---- usage ------------------------------------------------------------------------------------
@router.get("/usage")
def usage_page(request: Request, member: Member) -> HTMLResponse:
    """Credit balance, the plan's active slots, and every key's budget use."""
    with _services(request).session_factory() as session:
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


# ---- generations: gallery, playground, progress -----------------------------------------------
def generation_view(job: Generation, url_for) -> dict[str, Any]:
    return {"id": job.id, "tool": job.tool, "mode": job.mode, "status": job.status,
            "progress": 1.0 if job.status == "completed" else float(job.progress or 0.0),
            "cost_credits": job.cost_credits, "created_at": job.created_at,
            "output_urls": [url_for(k) for k in (job.output_keys or [])],
            "error_code": job.error_code, "error": job.error}


def _generations_page(request: Request, member: SignedInMember, *, error: str | None = None,
                      form: dict[str, Any] | None = None, started: str | None = None,
                      status_code: int = 200) -> HTMLResponse:
    services = _services(request)
    with services.session_factory() as session:
        items, _ = jobs.list_generations(session, member.account_id, surface="wixma",
                                         limit=GALLERY_SIZE)
        gallery = [generation_view(job, services.storage.url) for job in items]
    return render("generations.html", member, page="generations", gallery=gallery, error=error,
                  form=form or {}, started=started, status_code=status_code,
                  modes=PHOTOGRAPHER_MODES, angles=ANGLES, times=TIMES, seasons=tuple(SEASONS),
                  weathers=tuple(WEATHERS), qualities=QUALITIES, aspect_ratios=tuple(ASPECT_RATIOS),
                  scales=UPSCALE_SCALES)


@router.get("/generations")
def generations_page(request: Request, member: Member, started: str | None = None) -> HTMLResponse:
    return _generations_page(request, member, started=started)


def _read_image(file: UploadFile | None, field: str):
    """A validated image from an optional file input (None when no file was chosen)."""
    if file is None or not file.filename:
        return None
    data = file.file.read(MAX_IMAGE_BYTES + 1)
    if not data:
        return None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(field, f"is larger than {MAX_IMAGE_BYTES} bytes")
    return validate_image_bytes(data, field)


@router.post("/generations")
def start_generation(request: Request, member: Member,
                     csrf_token: Annotated[str | None, Form()] = None,
                     tool: Annotated[str, Form()] = "", prompt: Annotated[str, Form()] = "",
                     mode: Annotated[str, Form()] = "", text_prompt: Annotated[str, Form()] = "",
                     angle: Annotated[str, Form()] = "", time: Annotated[str, Form()] = "",
                     season: Annotated[str, Form()] = "", weather: Annotated[str, Form()] = "",
                     quality: Annotated[str, Form()] = "", aspect_ratio: Annotated[str, Form()] = "",
                     scale: Annotated[str, Form()] = "", seed: Annotated[str, Form()] = "",
                     source_generation: Annotated[str, Form()] = "",
                     image_file: Annotated[UploadFile | None, File()] = None,
                     mask_file: Annotated[UploadFile | None, File()] = None) -> Response:
    """Start a playground job through the API's own path (parse → image refs → create) on the
    account's playground key, then show the gallery where it is polled until it finishes."""
    csrf.check_form_token(request, member, csrf_token)
    form = {"tool": tool, "prompt": prompt, "mode": mode, "text_prompt": text_prompt,
            "angle": angle, "time": time, "season": season, "weather": weather,
            "quality": quality, "aspect_ratio": aspect_ratio, "scale": scale, "seed": seed,
            "source_generation": source_generation}
    services = _services(request)
    image_field = "image" if tool == "upscaler" else "main_image"
    try:
        image = _read_image(image_file, f"input.{image_field}")
        mask = _read_image(mask_file, "input.mask_image") if tool == "photographer" else None
        refs: dict[str, Any] = {}
        if image is not None:
            refs[image_field] = {"upload_id": "(chosen file)"}
        elif source_generation.strip():
            refs[image_field] = {"generation_id": source_generation.strip()}
        if mask is not None:
            refs["mask_image"] = {"upload_id": "(chosen file)"}
        parse_generation_request(forms.playground_body(form, refs))  # fail before storing files
        with transaction(services.session_factory) as session:
            key = playground_key(session, member.account_id)
            keys.ensure_key_usable(session, key)  # a paused playground key stops the playground
            for field, chosen in ((image_field, image), ("mask_image", mask)):
                if chosen is not None:
                    refs[field] = {"upload_id": store_upload(session, services.storage, key,
                                                             chosen).id}
        request_body = parse_generation_request(forms.playground_body(form, refs))
        generation, _ = submit_generation(services, key, request_body, surface="wixma")
    except RetouchError as error:
        return _generations_page(request, member, error=error.message, form=form,
                                 status_code=_error_status(error))
    return RedirectResponse(f"/dashboard/generations?started={generation.id}", status_code=303)


@router.get("/generations/{generation_id}/status")
def generation_status(request: Request, member: Member, generation_id: str) -> JSONResponse:
    """Progress of one of the account's jobs, for the gallery's polling."""
    services = _services(request)
    with services.session_factory() as session:
        job = jobs.get_generation(session, member.account_id, generation_id)
        view = generation_view(job, services.storage.url)
    view["created_at"] = view["created_at"].isoformat()
    return JSONResponse(view, headers={"Cache-Control": "no-store"})
