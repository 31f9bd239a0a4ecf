"""Wixma API v1 routes (`/api/v1`): parse, call core, shape the response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, File, Header, Query, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from retouch.serving.requests import WixmaRequest
from retouch.serving.tasks import TASKS, parse_request
from retouch.serving.core import credits, jobs
from retouch.serving.core.db import transaction
from retouch.serving.core.image_refs import read_upload, store_upload, validate_image_bytes
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.submissions import submit_generation
from retouch.serving.core.tables import ApiKey
from retouch.serving.deps import CREDITS, READ, UPLOAD, WRITE, ServicesDep
from retouch.serving.errors import request_id_of
from retouch.serving.event_streams import MEDIA_TYPE as EVENT_STREAM, job_event_stream

from .deps import api_key
from .schemas import (CreditsObject, CreditsResponse, GenerationList, GenerationResponse,
                      UploadResponse, cancel_conflict_response, error_responses,
                      generation_object, upload_object)

router = APIRouter(tags=["wixma"])
AUTH_ERRORS = (401, 402, 403, 429, 503)

JobStatus = Literal["pending", "processing", "completed", "failed"]
ToolName = Literal[TASKS.tools("wixma")]  # type: ignore[valid-type]


@router.post("/uploads", status_code=201, response_model=UploadResponse,
             responses=error_responses(400, *AUTH_ERRORS))
def create_upload(services: ServicesDep,
                  key: Annotated[ApiKey, Depends(api_key(UPLOAD))],
                  file: Annotated[UploadFile, File(description="PNG, JPEG or WEBP, at most 50 MB")],
                  request_id: Annotated[str, Depends(request_id_of)]) -> UploadResponse:
    """Upload an image; returns `upload.id` (reusable by this API key) and a fetchable URL."""
    image = validate_image_bytes(read_upload(file.file, "file"), "file")
    with transaction(services.session_factory) as session:
        upload = store_upload(session, services.storage, key, image)
    return UploadResponse(request_id=request_id,
                          upload=upload_object(upload, services.storage.url(upload.storage_key)))


@router.post("/generations", status_code=201, response_model=GenerationResponse,
             responses={200: {"model": GenerationResponse,
                              "description": "Idempotent replay: the existing job"},
                        **error_responses(400, 409, *AUTH_ERRORS)},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/GenerationRequest"}}}}})
async def create_generation(body: Annotated[Any, Body()], response: Response,
                            services: ServicesDep,
                            key: Annotated[ApiKey, Depends(api_key(WRITE))],
                            request_id: Annotated[str, Depends(request_id_of)],
                            idempotency_key: Annotated[str | None,
                                                       Header(alias="Idempotency-Key")] = None
                            ) -> GenerationResponse:
    """Start an async job (generator, editor, photographer, upscaler or ai_filter).

    Image references are resolved before the job exists: a bad reference fails here with
    `invalid_input` naming the field. Same `Idempotency-Key` + same body → the existing job (200).
    """
    def create() -> GenerationResponse:  # all of the database work in one thread hop
        request = parse_request(body)
        generation, replayed = submit_generation(services, key, request,
                                                 idempotency_key=idempotency_key, surface="wixma")
        if replayed:
            response.status_code = 200
        return GenerationResponse(request_id=request_id,
                                  generation=generation_object(generation, services.storage.url))

    return await run_in_threadpool(create)


@router.get("/generations/{generation_id}", response_model=GenerationResponse,
            responses=error_responses(404, *AUTH_ERRORS))
def get_generation(generation_id: str, services: ServicesDep,
                   key: Annotated[ApiKey, Depends(api_key(READ))],
                   request_id: Annotated[str, Depends(request_id_of)]) -> GenerationResponse:
    """One job of this account: status, progress, output URL(s), cost and error."""
    with services.session_factory() as session:
        generation = jobs.get_generation(session, key.account_id, generation_id)
    return GenerationResponse(request_id=request_id,
                              generation=generation_object(generation, services.storage.url))


@router.get("/generations/{generation_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {EVENT_STREAM: {}}, "description":
                             "Server-Sent Events: `status` and `progress` events "
                             "(`{status, progress, step, steps}`), then a `generation` event "
                             "with this job's GET response; 204 when `Last-Event-ID` already "
                             "saw it"},
                       **error_responses(404, *AUTH_ERRORS)})
def generation_events(generation_id: str, services: ServicesDep,
                      key: Annotated[ApiKey, Depends(api_key("generations:read"))],
                      request_id: Annotated[str, Depends(request_id_of)],
                      last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                      ) -> Response:
    """Live progress of one job of this account until it finishes; resumes after
    `Last-Event-ID`."""
    with services.session_factory() as session:
        jobs.get_generation(session, key.account_id, generation_id)

    def final_generation() -> dict:
        return get_generation(generation_id, services, key, request_id).model_dump(mode="json")

    return job_event_stream(services, generation_id, last_event_id, "generation",
                            final_generation)


@router.post("/generations/{generation_id}/cancel", response_model=GenerationResponse,
             responses={**error_responses(404, *AUTH_ERRORS), **cancel_conflict_response()})
def cancel_generation(generation_id: str, services: ServicesDep,
                      key: Annotated[ApiKey, Depends(api_key("generations:create"))],
                      request_id: Annotated[str, Depends(request_id_of)]
                      ) -> GenerationResponse:
    """Cancel a pending or processing job of this account: it ends `failed` with
    `error_code` `canceled`, its slot is freed and its credits refunded in full. A finished job
    answers 409 `invalid_input` and is left as it is."""
    generation = jobs.cancel_job(services.session_factory, key.account_id, generation_id)
    return GenerationResponse(request_id=request_id,
                              generation=generation_object(generation, services.storage.url))


@router.get("/generations", response_model=GenerationList,
            responses=error_responses(400, *AUTH_ERRORS))
def list_generations(services: ServicesDep,
                     key: Annotated[ApiKey, Depends(api_key(READ))],
                     request_id: Annotated[str, Depends(request_id_of)],
                     status: JobStatus | None = None, tool: ToolName | None = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                     cursor: str | None = None) -> GenerationList:
    """API-created jobs of this account, newest first; pass `next_cursor` back as `cursor`."""
    with services.session_factory() as session:
        items, next_cursor = jobs.list_generations(session, key.account_id, surface="wixma",
                                                   status=status, tool=tool, limit=limit,
                                                   cursor=cursor)
    return GenerationList(data=[generation_object(g, services.storage.url) for g in items],
                          has_more=next_cursor is not None, next_cursor=next_cursor,
                          request_id=request_id)


@router.get("/credits", response_model=CreditsResponse, responses=error_responses(*AUTH_ERRORS))
def get_credits(services: ServicesDep, key: Annotated[ApiKey, Depends(api_key(CREDITS))],
                request_id: Annotated[str, Depends(request_id_of)]) -> CreditsResponse:
    """Credit balance, queue capacity (active slots, limit, plan) and this key's budget usage."""
    with services.session_factory() as session:
        summary = credits.credit_summary(session, key)
    return CreditsResponse(request_id=request_id, credits=CreditsObject(**summary))


# ---- OpenAPI ----------------------------------------------------------------------------------
IMAGE_REF_SCHEMA: dict[str, Any] = {
    "title": "ImageRef",
    "description": "An image: a safe HTTPS URL, or one of {url}, {upload_id} (an upload of the "
                   "same API key), {generation_id} (a completed generation of the same account). "
                   "PNG, JPEG or WEBP up to 50 MB.",
    "oneOf": [
        {"type": "string", "format": "uri", "pattern": "^https://"},
        {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}},
         "required": ["url"], "additionalProperties": False},
        {"type": "object", "properties": {"upload_id": {"type": "string"}},
         "required": ["upload_id"], "additionalProperties": False},
        {"type": "object", "properties": {"generation_id": {"type": "string"}},
         "required": ["generation_id"], "additionalProperties": False},
    ],
}


def openapi_components() -> dict[str, Any]:
    """Component schemas for the generation body: the typed request union, with image refs in
    their wire form (the typed model's internal `kind`/`value` never appears on the wire)."""
    schema = TypeAdapter(WixmaRequest).json_schema(ref_template="#/components/schemas/{model}")
    components = dict(schema.pop("$defs", {}))
    properties = components["PhotographerOptions"]["properties"]
    # The registry's modes, as registered when the schema is built.
    properties["mode"] = {"enum": list(TASKS.modes("photographer")), **properties["mode"]}
    components["GenerationRequest"] = {**schema, "title": "GenerationRequest"}
    components["ImageRef"] = IMAGE_REF_SCHEMA
    return components
