"""Dashboard generations (`/dashboard/generations`): a gallery of the account's recent jobs, the
playground that starts a job of every Wixma tool (editor with reference images, every
photographer mode of the registry, upscaler, AI filters), each running job's live
progress (an event stream the gallery's script follows, ending with the job's view; the small
JSON status endpoint stays for browsers without `EventSource`) and its cancel button.

Playground jobs take the API's own path (`parse_request` → image references →
`submissions.submit_generation`) on the account's playground key (see `playground`), so tools,
prices, slots, budgets and credits are checked exactly as for an API call.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from retouch.serving.core.errors import RetouchError
from retouch.serving.tasks import TASKS, parse_request
from retouch.pipelines.vocabulary import (AI_FILTERS, ANGLES, ASPECT_RATIOS, QUALITIES, SEASONS, TIMES,
                                          UPSCALE_SCALES, WEATHERS)
from retouch.serving.core import jobs, keys
from retouch.serving.core.db import transaction
from retouch.serving.core.image_refs import read_upload, store_upload, validate_image_bytes
from retouch.serving.core.members import SignedInMember
from retouch.serving.core.submissions import submit_generation
from retouch.serving.core.tables import Generation
from retouch.serving.event_streams import job_event_stream

from . import csrf, forms
from .playground import playground_key
from .rendering import error_status, render, services_of
from .session import Member

router = APIRouter(prefix="/dashboard", include_in_schema=False)
GALLERY_SIZE = 24


def generation_view(job: Generation, url_for) -> dict[str, Any]:
    return {"id": job.id, "tool": job.tool, "mode": job.mode, "status": job.status,
            "progress": 1.0 if job.status == "completed" else float(job.progress or 0.0),
            "cost_credits": job.cost_credits, "created_at": job.created_at,
            "output_urls": [url_for(k) for k in (job.output_keys or [])],
            "step": job.step, "steps": job.steps,
            "error_code": job.error_code, "error": job.error}


def _generations_page(request: Request, member: SignedInMember, *, error: str | None = None,
                      form: dict[str, Any] | None = None, started: str | None = None,
                      status_code: int = 200) -> HTMLResponse:
    services = services_of(request)
    with services.session_factory() as session:
        items, _ = jobs.list_generations(session, member.account_id, surface="wixma",
                                         limit=GALLERY_SIZE)
        gallery = [generation_view(job, services.storage.url) for job in items]
    return render("generations.html", member, page="generations", gallery=gallery, error=error,
                  form=form or {}, started=started, status_code=status_code,
                  modes=TASKS.modes("photographer"), angles=ANGLES, times=TIMES, seasons=tuple(SEASONS),
                  weathers=tuple(WEATHERS), qualities=QUALITIES, aspect_ratios=tuple(ASPECT_RATIOS),
                  scales=UPSCALE_SCALES, tools=forms.playground_tools(), filters=AI_FILTERS)


@router.get("/generations")
def generations_page(request: Request, member: Member, started: str | None = None) -> HTMLResponse:
    return _generations_page(request, member, started=started)


def _read_image(file: UploadFile | None, field: str):
    """A validated image from an optional file input (None when no file was chosen)."""
    if file is None or not file.filename:
        return None
    data = read_upload(file.file, field)
    if not data:
        return None
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
                     filter: Annotated[str, Form()] = "",  # noqa: A002 (the seed's name)
                     source_generation: Annotated[str, Form()] = "",
                     image_file: Annotated[UploadFile | None, File()] = None,
                     mask_file: Annotated[UploadFile | None, File()] = None,
                     reference_files: Annotated[list[UploadFile] | None, File()] = None,
                     ) -> Response:
    """Start a playground job through the API's own path (parse → image refs → create) on the
    account's playground key, then show the gallery where it is polled until it finishes.

    The main image is a file or a completed generation; `reference_files` are the editor's
    further images (`input.images[1..]`) or the photographer's `secondary_images`."""
    csrf.check_form_token(request, member, csrf_token)
    form = {"tool": tool, "prompt": prompt, "mode": mode, "text_prompt": text_prompt,
            "angle": angle, "time": time, "season": season, "weather": weather,
            "quality": quality, "aspect_ratio": aspect_ratio, "scale": scale, "seed": seed,
            "filter": filter, "source_generation": source_generation}
    services = services_of(request)
    image_field = {"upscaler": "image", "ai_filter": "image", "editor": "images[0]"}.get(
        tool, "main_image")
    list_field = {"editor": "images", "photographer": "secondary_images"}.get(tool)
    try:
        image = _read_image(image_file, f"input.{image_field}")
        mask = _read_image(mask_file, "input.mask_image") if tool == "photographer" else None
        extra_offset = 1 if tool == "editor" else 0
        extras = [] if list_field is None else [
            chosen for i, f in enumerate(reference_files or [])
            if (chosen := _read_image(f, f"input.{list_field}[{i + extra_offset}]")) is not None]
        main_ref: dict[str, Any] | None = None
        if image is not None:
            main_ref = {"upload_id": "(chosen file)"}
        elif source_generation.strip():
            main_ref = {"generation_id": source_generation.strip()}

        def refs_with(stored: dict[str, Any]) -> dict[str, Any]:
            refs: dict[str, Any] = {}
            main = stored.get("main", main_ref)
            extra_refs = stored.get("extras", [{"upload_id": "(chosen file)"}] * len(extras))
            if tool == "editor":
                refs["images"] = ([main] if main else []) + extra_refs
            else:
                if main:
                    refs["image" if image_field == "image" else "main_image"] = main
                if extra_refs:
                    refs["secondary_images"] = extra_refs
            if mask is not None:
                refs["mask_image"] = stored.get("mask", {"upload_id": "(chosen file)"})
            return refs

        parse_request(forms.playground_body(form, refs_with({})))  # fail before storing files
        with transaction(services.session_factory) as session:
            key = playground_key(session, member.account_id)
            keys.ensure_key_usable(session, key)  # a paused playground key stops the playground

            def stored(chosen) -> dict[str, Any]:
                return {"upload_id": store_upload(session, services.storage, key, chosen).id}

            uploaded: dict[str, Any] = {"extras": [stored(c) for c in extras]}
            if image is not None:
                uploaded["main"] = stored(image)
            if mask is not None:
                uploaded["mask"] = stored(mask)
        request_body = parse_request(forms.playground_body(form, refs_with(uploaded)))
        generation, _ = submit_generation(services, key, request_body, surface="wixma")
    except RetouchError as error:
        return _generations_page(request, member, error=error.message, form=form,
                                 status_code=error_status(error))
    return RedirectResponse(f"/dashboard/generations?started={generation.id}", status_code=303)


@router.get("/generations/{generation_id}/status")
def generation_status(request: Request, member: Member, generation_id: str) -> JSONResponse:
    """Progress of one of the account's jobs, for the gallery's polling."""
    services = services_of(request)
    with services.session_factory() as session:
        job = jobs.get_generation(session, member.account_id, generation_id)
        view = generation_view(job, services.storage.url)
    view["created_at"] = view["created_at"].isoformat()
    return JSONResponse(view, headers={"Cache-Control": "no-store"})


@router.get("/generations/{generation_id}/events")
def generation_events(request: Request, member: Member, generation_id: str,
                      last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                      ) -> Response:
    """Live progress of one of the account's jobs (the API's event stream), ending with a
    `generation` event carrying the gallery's view of the job."""
    services = services_of(request)
    with services.session_factory() as session:
        jobs.get_generation(session, member.account_id, generation_id)

    def final_view() -> dict[str, Any]:
        with services.session_factory() as session:
            view = generation_view(jobs.get_generation(session, member.account_id,
                                                       generation_id), services.storage.url)
        view["created_at"] = view["created_at"].isoformat()
        return view

    return job_event_stream(services, generation_id, last_event_id, "generation", final_view)


@router.post("/generations/{generation_id}/cancel")
def cancel_generation(request: Request, member: Member, generation_id: str,
                      csrf_token: Annotated[str | None, Form()] = None) -> Response:
    """Cancel one of the account's running jobs (refunded in full), then show the gallery."""
    csrf.check_form_token(request, member, csrf_token)
    try:
        jobs.cancel_job(services_of(request).session_factory, member.account_id, generation_id)
    except RetouchError as error:
        return _generations_page(request, member, error=error.message,
                                 status_code=error_status(error))
    return RedirectResponse(f"/dashboard/generations#job-{generation_id}", status_code=303)
