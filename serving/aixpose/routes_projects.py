"""`/v1/projects`: create, read, list, publish, and the published media for mirroring."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from retouch.serving.core import organizations, projects, videos
from retouch.serving.core.db import transaction
from retouch.serving.core.idempotency import create_idempotently
from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.etags import etag_matches, etag_of
from retouch.serving.core.pagination import MAX_PAGE_SIZE, decode_cursor, encode_cursor
from retouch.serving.core.tables import ApiKey
from retouch.serving.core.timestamps import format_timestamp
from retouch.serving.deps import READ, WRITE, ServicesDep

from .deps import IdempotencyKey, aixpose_key, responses
from .responses import ProjectList, ProjectObject, PublishedMediaList
from .schemas import ProjectCreate, list_payload, project_payload

router = APIRouter(tags=["aixpose projects"])


@router.post("/projects", status_code=201, response_model=ProjectObject,
             responses=responses(409, replay=ProjectObject))
def create_project(body: ProjectCreate, response: Response, services: ServicesDep,
                   key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                   idempotency_key: IdempotencyKey = None) -> dict:
    """A listing/property/campaign with its output defaults (omitted ones: the organization's
    `default_output`, else the built-in defaults); returns the project object."""
    def create(session) -> str:
        fields = body.model_dump()
        defaults = organizations.get_organization(session, key.account_id).default_output or {}
        for name, value in defaults.items():
            if name in fields and name not in body.model_fields_set:
                fields[name] = value
        return projects.create_project(session, key.account_id, **fields).id

    project_id, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, body.model_dump(), "project", create,
        ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        return project_payload(projects.get_project(session, key.account_id, project_id))


@router.get("/projects/{project_id}", response_model=ProjectObject, responses=responses(404))
def get_project(project_id: str, services: ServicesDep,
                key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    with services.session_factory() as session:
        return project_payload(projects.get_project(session, key.account_id, project_id))


@router.get("/projects", response_model=ProjectList, responses=responses())
def list_projects(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                  cursor: str | None = None) -> dict:
    """Newest first; pass `next_cursor` back as `cursor`."""
    with services.session_factory() as session:
        items, next_cursor = projects.list_projects(session, key.account_id, limit=limit,
                                                    cursor=cursor)
        return list_payload([project_payload(p) for p in items], next_cursor)


@router.post("/projects/{project_id}/publish", response_model=ProjectObject,
             responses=responses(404, 409))
def publish_project(project_id: str, response: Response, services: ServicesDep,
                    key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                    idempotency_key: IdempotencyKey = None) -> dict:
    """Freeze the approved pictures as the published media set (their URLs); emits
    `project.published`. A project whose `output` is `video` also starts its listing reel (a
    tour of the approved pictures) unless one of exactly those pictures exists; publish again
    after its `video.completed` to add it to the set."""
    videos.start_listing_reel(services, key, project_id, idempotency_key=idempotency_key)

    def publish(session) -> str:
        project = projects.get_project(session, key.account_id, project_id)
        return projects.publish(session, project, services.storage).id

    _, replayed = create_idempotently(services.session_factory, key.id, idempotency_key,
                                      {"publish": project_id}, "publish", publish,
                                      ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with transaction(services.session_factory) as session:
        return project_payload(projects.get_project(session, key.account_id, project_id))


@router.get("/projects/{project_id}/media", responses={
    200: {"model": PublishedMediaList},  # answered as a JSONResponse, so documented here
    304: {"description": "Not modified (`If-None-Match` matched)"}, **responses(400, 404)})
def list_published_media(project_id: str, request: Request, services: ServicesDep,
                         key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                         limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                         cursor: str | None = None,
                         updated_after: str | None = None) -> Response:
    """The published set for mirroring: stable `url`, `etag` (sha256 of the bytes), `bytes`,
    `media_type` and `updated_at` per item, oldest change first. `updated_after` (a timestamp)
    gives only what changed since; the response's `ETag` lets `If-None-Match` answer 304."""
    with services.session_factory() as session:
        project = projects.get_project(session, key.account_id, project_id)
        media = list(project.published_media or [])
        published_at = project.published_at
    page, next_cursor = published_page(media, limit, cursor, updated_after)
    body = {**list_payload(page, next_cursor),
            "published_at": format_timestamp(published_at) if published_at else None}
    tag = etag_of(json.dumps(body, sort_keys=True).encode())
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if etag_matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)


def _parse_time(value: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(field, "must be an ISO 8601 timestamp "
                                  "(e.g. 2026-06-07T10:00:00.000Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def published_page(media: list[dict], limit: int, cursor: str | None,
                   updated_after: str | None) -> tuple[list[dict], str | None]:
    """One page of the published entries ordered by (`updated_at`, type:id)."""
    def position(m: dict) -> tuple[datetime, str]:
        return _parse_time(m["updated_at"], "updated_at"), f"{m['type']}:{m['id']}"

    items = sorted((m for m in media if m.get("updated_at")), key=position)
    if updated_after is not None:
        since = _parse_time(updated_after, "updated_after")
        items = [m for m in items if position(m)[0] > since]
    if cursor:
        after = decode_cursor(cursor)
        items = [m for m in items if position(m) > after]
    if len(items) <= limit:
        return items, None
    last = position(items[limit - 1])
    return items[:limit], encode_cursor(SimpleNamespace(created_at=last[0], id=last[1]))
