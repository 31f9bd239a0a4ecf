"""Dashboard AIXpose pages (`/dashboard/projects`): the account's projects, each project's
pictures (status, version numbers, thumbnail, approval) and videos, one picture's lineage, and
the approve button. Routes call `core.projects` / `core.videos` exactly as the `/v1` API does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retouch.serving.core import projects, videos
from retouch.serving.core.db import transaction
from retouch.serving.core.errors import RetouchError
from retouch.serving.core.public_objects import picture_payload, video_object

from . import csrf
from .rendering import error_status, render, services_of
from .session import Member

router = APIRouter(prefix="/dashboard", include_in_schema=False)
PAGE_SIZE = 50


@router.get("/projects")
def projects_page(request: Request, member: Member) -> HTMLResponse:
    services = services_of(request)
    with services.session_factory() as session:
        items, _ = projects.list_projects(session, member.account_id, limit=PAGE_SIZE)
        views = [{"id": p.id, "name": p.name, "status": p.status, "output": p.output,
                  "published": len(p.published_media or []), "created_at": p.created_at}
                 for p in items]
    return render("projects.html", member, page="projects", projects=views)


def _project_page(request: Request, member, project_id: str, *, error: str | None = None,
                  status_code: int = 200) -> HTMLResponse:
    services = services_of(request)
    with services.session_factory() as session:
        project = projects.get_project(session, member.account_id, project_id)
        pictures, _ = projects.list_pictures(session, project, limit=PAGE_SIZE)
        picture_views = [picture_payload(session, p, services.storage.url) for p in pictures]
        reels, _ = videos.list_videos(session, member.account_id, project_id=project.id,
                                      limit=PAGE_SIZE)
        video_views = [video_object(session, services.storage, v) for v in reels]
        view = {"id": project.id, "name": project.name, "status": project.status,
                "published_media": list(project.published_media or [])}
    return render("project.html", member, page="projects", project=view,
                  pictures=picture_views, videos=video_views, error=error,
                  status_code=status_code)


@router.get("/projects/{project_id}")
def project_page(request: Request, member: Member, project_id: str) -> HTMLResponse:
    return _project_page(request, member, project_id)


@router.get("/pictures/{picture_id}/lineage")
def lineage_page(request: Request, member: Member, picture_id: str) -> HTMLResponse:
    services = services_of(request)
    with services.session_factory() as session:
        picture = projects.get_picture(session, member.account_id, picture_id)
        chain = [{**picture_payload(session, p, services.storage.url),
                  "model_revision": p.model_revision}
                 for p in projects.lineage(session, picture)]
    return render("lineage.html", member, page="projects", chain=chain,
                  project_id=picture.project_id)


@router.post("/pictures/{picture_id}/approve")
def approve_picture(request: Request, member: Member, picture_id: str,
                    csrf_token: Annotated[str | None, Form()] = None) -> Response:
    """Approve a completed picture (publishable; teaches the agent), then show its project."""
    csrf.check_form_token(request, member, csrf_token)
    services = services_of(request)
    with services.session_factory() as session:
        project_id = projects.get_picture(session, member.account_id, picture_id).project_id
    try:
        with transaction(services.session_factory) as session:
            projects.approve(session, projects.get_picture(session, member.account_id,
                                                           picture_id))
    except RetouchError as error:
        return _project_page(request, member, project_id, error=error.message,
                             status_code=error_status(error))
    return RedirectResponse(f"/dashboard/projects/{project_id}#picture-{picture_id}",
                            status_code=303)


