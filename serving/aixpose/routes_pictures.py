"""`/v1/projects/{id}/pictures` and `/v1/pictures/...`: uploads (JSON URL, JSON base64 or
multipart `file`), reads, enhancements, lineage, feedback and approval."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from retouch.pipelines.actions import check_instruction
from retouch.serving.core.errors import InvalidInput, JobNotCancellable, RetouchError
from retouch.serving.core import jobs, projects
from retouch.serving.core.public_objects import picture_payload
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.idempotency import (check_idempotency_key, create_idempotently,
                                              find_resource_replay, request_hash)
from retouch.serving.core.image_refs import (check_base64_size, read_upload, store_upload,
                                             validate_image_bytes)
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.tables import ApiKey
from retouch.serving.deps import READ, UPLOAD, WRITE, ServicesDep
from retouch.serving.errors import cancel_conflict_response
from retouch.serving.event_streams import MEDIA_TYPE as EVENT_STREAM, job_event_stream

from .deps import IdempotencyKey, aixpose_key, check_webhook_url, model_revision, responses
from .responses import Lineage, PictureList, PictureObject
from .schemas import (Base64Source, EnhancementCreate, FeedbackCreate, PictureCreate, PictureForm,
                      inline_schema, list_payload, parse_model)

log = logging.getLogger(__name__)
router = APIRouter(tags=["aixpose pictures"])


def payload(services, picture_id: str, account_id: str) -> dict[str, Any]:
    with services.session_factory() as session:
        picture = projects.get_picture(session, account_id, picture_id)
        return picture_payload(session, picture, services.storage.url)


# ---- uploads ----------------------------------------------------------------------------------
async def _read_picture_request(request: Request) -> tuple[Any, bytes | None]:
    """(validated fields, file bytes for multipart) from a JSON or multipart body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidInput("file", "is required (a PNG, JPEG or WEBP file)")
        data = await run_in_threadpool(read_upload, file.file, "file")
        fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        return parse_model(PictureForm, fields), data
    try:
        raw = json.loads(await request.body() or b"null")
    except ValueError:
        raise InvalidInput("body", "is not valid JSON") from None
    return parse_model(PictureCreate, raw), None


def _base64_image(source: Base64Source, field: str = "source"):
    check_base64_size(source.data, f"{field}.data")
    try:
        data = base64.b64decode(source.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field}.data", "is not valid base64") from None
    image = validate_image_bytes(data, f"{field}.data")
    if image.media_type != source.media_type:
        raise InvalidInput(f"{field}.media_type", f"says {source.media_type} but the data is "
                                                  f"{image.media_type}")
    return image


def _create_picture(services, key: ApiKey, project_id: str, fields, file_data: bytes | None,
                    idempotency_key: str | None) -> tuple[str, bool]:
    source = getattr(fields, "source", None)
    if file_data is not None:
        described = {"type": "file", "sha256": hashlib.sha256(file_data).hexdigest()}
    elif source.type == "url":
        described = {"type": "url", "url": source.url}
    else:
        described = {"type": "base64", "media_type": source.media_type,
                     "sha256": hashlib.sha256(source.data.encode()).hexdigest()}
    body = {"project_id": project_id, "source": described, "scene_type": fields.scene_type,
            "scene_location": fields.scene_location, "webhook_url": fields.webhook_url}
    ttl = services.settings.idempotency_ttl_hours
    with transaction(services.session_factory) as session:
        projects.get_project(session, key.account_id, project_id)
        if idempotency_key is not None:  # a replay answers before anything is fetched again
            replay = find_resource_replay(session, key.id, check_idempotency_key(idempotency_key),
                                          request_hash(body), "picture", ttl_hours=ttl,
                                          now=utcnow())
            if replay is not None:
                return replay, True
    webhook_url = check_webhook_url(fields.webhook_url, services)
    if file_data is not None:
        image = validate_image_bytes(file_data, "file")
    elif source.type == "url":
        image = services.fetcher.fetch(source.url, "source.url").image
    else:
        image = _base64_image(source)

    def create(session) -> str:
        project = projects.get_project(session, key.account_id, project_id)
        upload = store_upload(session, services.storage, key, image, reuse=True)
        return projects.create_original(session, project, upload, scene_type=fields.scene_type,
                                        scene_location=fields.scene_location,
                                        webhook_url=webhook_url).id

    return create_idempotently(services.session_factory, key.id, idempotency_key, body,
                               "picture", create, ttl_hours=ttl)


def auto_enhance(services, key: ApiKey, picture_id: str) -> None:
    """The agent, when enabled, enhances a new upload with the preferred actions of its scene
    type (one variant, the project's defaults). Failures (e.g. credits) leave the upload alone."""
    with transaction(services.session_factory) as session:
        agent = projects.get_agent(session, key.account_id)
        picture = projects.get_picture(session, key.account_id, picture_id)
        actions = projects.preferred_actions(agent, picture.scene_type) if agent.enabled else []
        webhook_url = picture.webhook_url
    if not actions:
        return
    try:
        services.require_executor()
        projects.create_enhancement(
            services.session_factory, services.storage, key, picture_id, action_ids=actions,
            prompt=None, instruction={"source": "preset", "actions": actions, "origin": "agent"},
            variants=1, aspect_ratio=None, resolution=None, webhook_url=webhook_url,
            model_revision=model_revision(services.settings),
            idempotency_key=f"agent-{picture_id}",
            idempotency_ttl_hours=services.settings.idempotency_ttl_hours)
    except RetouchError as exc:
        log.warning("agent auto-enhancement of %s skipped: %s", picture_id, exc.message)


@router.post("/projects/{project_id}/pictures", status_code=201,
             response_model=PictureObject,
             responses=responses(404, 409, replay=PictureObject), openapi_extra={
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(PictureCreate)},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file", "scene_type"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           "scene_type": {"type": "string"}, "scene_location": {"type": "string"},
                           "webhook_url": {"type": "string"}}}}}}})
async def create_picture(project_id: str, request: Request, response: Response,
                         services: ServicesDep,
                         key: Annotated[ApiKey, Depends(aixpose_key(UPLOAD))],
                         idempotency_key: IdempotencyKey = None) -> dict:
    """An original picture from `source` {type: url|base64} JSON or a multipart `file`."""
    fields, file_data = await _read_picture_request(request)
    picture_id, replayed = await run_in_threadpool(_create_picture, services, key, project_id,
                                                   fields, file_data, idempotency_key)
    if replayed:
        response.status_code = 200
    else:
        await run_in_threadpool(auto_enhance, services, key, picture_id)
    return await run_in_threadpool(payload, services, picture_id, key.account_id)


@router.get("/projects/{project_id}/pictures", response_model=PictureList,
            responses=responses(404))
def list_pictures(project_id: str, services: ServicesDep,
                  key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                  cursor: str | None = None) -> dict:
    with services.session_factory() as session:
        project = projects.get_project(session, key.account_id, project_id)
        items, next_cursor = projects.list_pictures(session, project, limit=limit, cursor=cursor)
        return list_payload([picture_payload(session, p, services.storage.url)
                             for p in items], next_cursor)


@router.get("/pictures/{picture_id}", response_model=PictureObject, responses=responses(404))
def get_picture(picture_id: str, services: ServicesDep,
                key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    return payload(services, picture_id, key.account_id)


# ---- enhancements -----------------------------------------------------------------------------
@router.post("/pictures/{picture_id}/enhancements", status_code=201, response_model=PictureList,
             responses=responses(404, 409, replay=PictureList))
def create_enhancement(picture_id: str, body: EnhancementCreate, response: Response,
                       services: ServicesDep,
                       key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                       idempotency_key: IdempotencyKey = None) -> dict:
    """One new picture per variant, rendered asynchronously; answers them as a list."""
    services.require_executor()
    webhook_url = check_webhook_url(body.webhook_url, services)
    spec = body.instruction
    instruction = spec.model_dump(exclude_none=True)
    with services.session_factory() as session:
        picture = projects.get_picture(session, key.account_id, picture_id)
        actions, prompt = list(spec.actions or []), spec.prompt
        if spec.source == "quick_action":
            quick = projects.get_quick_action(session, key.account_id, spec.quick_action_id)
            actions = list(quick["instruction"].get("actions") or [])
            prompt = quick["instruction"].get("prompt")
            instruction["actions"] = actions
        check_instruction(actions, prompt, "instruction", scene_type=picture.scene_type)
    pictures, replayed = projects.create_enhancement(
        services.session_factory, services.storage, key, picture_id, action_ids=actions,
        prompt=prompt, instruction=instruction, variants=body.variants,
        aspect_ratio=body.aspect_ratio, resolution=body.resolution, webhook_url=webhook_url,
        output_format=body.output_format, consistent_with=spec.consistent_with,
        model_revision=model_revision(services.settings), idempotency_key=idempotency_key,
        idempotency_ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        return list_payload([picture_payload(session, p, services.storage.url)
                             for p in pictures])


@router.get("/pictures/{picture_id}/lineage", response_model=Lineage, responses=responses(404))
def get_lineage(picture_id: str, services: ServicesDep,
                key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """The picture and its ancestors up to the original (newest first): parent, instruction,
    seed and model revision of each step."""
    with services.session_factory() as session:
        picture = projects.get_picture(session, key.account_id, picture_id)
        return list_payload([
            {"id": p.id, "object": "lineage_step", "parent_id": p.parent_id,
             "version": p.version, "subversion": p.subversion,
             "source_instruction": p.source_instruction, "seed": p.seed,
             "model_revision": p.model_revision, "job_id": p.generation_id,
             "status": projects.picture_state(session, p)["status"]}
            for p in projects.lineage(session, picture)])


# ---- review -----------------------------------------------------------------------------------
@router.post("/pictures/{picture_id}/feedback", response_model=PictureObject,
             responses=responses(404, 409))
def give_feedback(picture_id: str, body: FeedbackCreate, services: ServicesDep,
                  key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                  idempotency_key: IdempotencyKey = None) -> dict:
    """A 1–5 rating and comment; feeds the agent's learned preferences for the scene type."""
    def record(session) -> str:
        picture = projects.get_picture(session, key.account_id, picture_id)
        return projects.give_feedback(session, picture, body.rating, body.comment).id

    create_idempotently(services.session_factory, key.id, idempotency_key,
                        {"picture_id": picture_id, **body.model_dump()}, "feedback", record,
                        ttl_hours=services.settings.idempotency_ttl_hours)
    return payload(services, picture_id, key.account_id)


@router.post("/pictures/{picture_id}/approve", response_model=PictureObject,
             responses=responses(404, 409))
def approve_picture(picture_id: str, services: ServicesDep,
                    key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                    idempotency_key: IdempotencyKey = None) -> dict:
    """Mark a completed picture approved (publishable; teaches the agent)."""
    def record(session) -> str:
        picture = projects.get_picture(session, key.account_id, picture_id)
        return projects.approve(session, picture).id

    create_idempotently(services.session_factory, key.id, idempotency_key,
                        {"approve": picture_id}, "approval", record,
                        ttl_hours=services.settings.idempotency_ttl_hours)
    return payload(services, picture_id, key.account_id)


# ---- live progress and cancel -----------------------------------------------------------------
@router.get("/pictures/{picture_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {EVENT_STREAM: {}}, "description":
                             "Server-Sent Events: `status` and `progress` events, then a "
                             "`picture` event with the picture object"},
                       **responses(404)})
def picture_events(picture_id: str, services: ServicesDep,
                   key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                   last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                   ) -> Response:
    """Server-Sent Events of the picture's job (`status`, `progress`), ending with a `picture`
    event carrying the picture object; an uploaded original is completed at once."""
    with services.session_factory() as session:
        job_id = projects.get_picture(session, key.account_id, picture_id).generation_id
    return job_event_stream(services, job_id, last_event_id, "picture",
                            lambda: payload(services, picture_id, key.account_id))


@router.post("/pictures/{picture_id}/cancel", response_model=PictureObject,
             responses={**responses(404), **cancel_conflict_response()})
def cancel_picture(picture_id: str, services: ServicesDep,
                   key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """Cancel the picture's pending or processing enhancement job: it (and its sibling variants,
    one job) ends `failed` with `error_code` `canceled`, refunded in full, with `picture.failed`
    webhooks. A finished picture answers 409 `invalid_input`."""
    with services.session_factory() as session:
        picture = projects.get_picture(session, key.account_id, picture_id)
        job_id, status = picture.generation_id, projects.picture_state(session, picture)["status"]
    if job_id is None:
        raise JobNotCancellable("picture_id", f"picture {picture_id!r} is an uploaded "
                                              f"original; there is nothing to cancel",
                                status=status)
    jobs.cancel_job(services.session_factory, key.account_id, job_id, field="picture_id",
                    subject=f"picture {picture_id!r}")
    return payload(services, picture_id, key.account_id)
