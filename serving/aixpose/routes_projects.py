"""`/v1/projects`: create, read, list, publish."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from retouch.serving.core import projects
from retouch.serving.core.db import transaction
from retouch.serving.core.idempotency import create_idempotently
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.tables import ApiKey
from retouch.serving.deps import READ, WRITE, ServicesDep

from .deps import IdempotencyKey, aixpose_key, responses
from .schemas import ProjectCreate, list_payload, project_payload

router = APIRouter(tags=["aixpose projects"])


@router.post("/projects", status_code=201, responses=responses(409, replay=True))
def create_project(body: ProjectCreate, response: Response, services: ServicesDep,
                   key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                   idempotency_key: IdempotencyKey = None) -> dict:
    """A listing/property/campaign with its output defaults; returns the project object."""
    project_id, replayed = create_idempotently(
        services.session_factory, key.id, idempotency_key, body.model_dump(), "project",
        lambda session: projects.create_project(session, key.account_id,
                                                **body.model_dump()).id,
        ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        return project_payload(projects.get_project(session, key.account_id, project_id))


@router.get("/projects/{project_id}", responses=responses(404))
def get_project(project_id: str, services: ServicesDep,
                key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    with services.session_factory() as session:
        return project_payload(projects.get_project(session, key.account_id, project_id))


@router.get("/projects", responses=responses())
def list_projects(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                  cursor: str | None = None) -> dict:
    """Newest first; pass `next_cursor` back as `cursor`."""
    with services.session_factory() as session:
        items, next_cursor = projects.list_projects(session, key.account_id, limit=limit,
                                                    cursor=cursor)
        return list_payload([project_payload(p) for p in items], next_cursor)


@router.post("/projects/{project_id}/publish", responses=responses(404, 409))
def publish_project(project_id: str, response: Response, services: ServicesDep,
                    key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                    idempotency_key: IdempotencyKey = None) -> dict:
    """Freeze the approved pictures as the published media set (their URLs); emits
    `project.published`."""
    def publish(session) -> str:
        project = projects.get_project(session, key.account_id, project_id)
        return projects.publish(session, project, services.storage.url).id

    _, replayed = create_idempotently(services.session_factory, key.id, idempotency_key,
                                      {"publish": project_id}, "publish", publish,
                                      ttl_hours=services.settings.idempotency_ttl_hours)
    if replayed:
        response.status_code = 200
    with transaction(services.session_factory) as session:
        return project_payload(projects.get_project(session, key.account_id, project_id))
