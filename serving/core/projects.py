"""AIXpose domain: projects, pictures and their version lineage, feedback/approval, the agent's
preferences, quick actions and publishing. Routes in `serving/aixpose/` call these.

Pictures: an original (an upload; version 0, subversion 0, its own `root_id`) or a generated
variant of an enhancement job (`generation_id` + `output_index`). A generated picture's status,
progress and output come from its job: `core.jobs` stays the only owner of status.

Lineage numbers, allocated inside the job's creation transaction under a lock on the lineage's
original: enhancing the original gives version N+1 (N = the highest version in the lineage),
subversions 0..variants-1; enhancing a generated picture of version v keeps v and continues its
subversions (max + 1, + 2, ...).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from retouch.pipelines.actions import (ACTIONS_BY_ID, BUILTIN_QUICK_ACTIONS, GROUPS_BY_ID,
                                       SCENE_TYPES)

from ..tasks import parse_request
from . import jobs
from .db import is_sqlite, transaction, utcnow
from .errors import InvalidInput, NotFound
from .image_refs import validate_image_bytes
from .pagination import check_limit, newest_first_page
from .public_objects import StorageUrl, picture_state
from .tables import AgentSettings, Generation, Picture, Project, QuickAction, Upload, Video
from .timestamps import format_timestamp
from .webhook_outbox import enqueue_event

APPROVAL_WEIGHT = 2.0  # an approval counts like a 5-star rating
MAX_PREFERRED_ACTIONS = 3


# ---- projects ---------------------------------------------------------------------------------
def create_project(session: Session, account_id: str, *, name: str, output: str,
                   picture_aspect_ratio: str, picture_resolution: str,
                   picture_format: str = "jpeg", video_format: str = "mp4") -> Project:
    project = Project(account_id=account_id, name=name, output=output,
                      picture_aspect_ratio=picture_aspect_ratio,
                      picture_resolution=picture_resolution, picture_format=picture_format,
                      video_format=video_format, status="draft", published_media=[],
                      created_at=utcnow())
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, account_id: str, project_id: str,
                field: str = "project_id") -> Project:
    project = session.get(Project, project_id)
    if project is None or project.account_id != account_id:
        raise NotFound(field, f"project {project_id!r} was not found")
    return project


def _page(session: Session, query, model, limit: int, cursor: str | None):
    check_limit(limit)
    return newest_first_page(session, query, model, limit, cursor)


def list_projects(session: Session, account_id: str, *, limit: int = 20,
                  cursor: str | None = None) -> tuple[list[Project], str | None]:
    """The account's projects, newest first, with an opaque `next_cursor`."""
    return _page(session, select(Project).where(Project.account_id == account_id), Project,
                 limit, cursor)


# ---- pictures ---------------------------------------------------------------------------------
def create_original(session: Session, project: Project, upload: Upload, *, scene_type: str,
                    scene_location: str | None, webhook_url: str | None) -> Picture:
    picture = Picture(account_id=project.account_id, project_id=project.id, upload_id=upload.id,
                      output_index=0, version=0, subversion=0, scene_type=scene_type,
                      scene_location=scene_location, webhook_url=webhook_url,
                      created_at=utcnow())
    session.add(picture)
    session.flush()
    picture.root_id = picture.id
    session.flush()
    return picture


def get_picture(session: Session, account_id: str, picture_id: str,
                field: str = "picture_id") -> Picture:
    picture = session.get(Picture, picture_id)
    if picture is None or picture.account_id != account_id:
        raise NotFound(field, f"picture {picture_id!r} was not found")
    return picture


def list_pictures(session: Session, project: Project, *, limit: int = 20,
                  cursor: str | None = None) -> tuple[list[Picture], str | None]:
    return _page(session, select(Picture).where(Picture.project_id == project.id), Picture,
                 limit, cursor)


def pictures_for_job(session: Session, generation_id: str) -> list[Picture]:
    """The pictures an enhancement job renders, in output order (for webhook payloads)."""
    return list(session.scalars(select(Picture).where(Picture.generation_id == generation_id)
                                .order_by(Picture.output_index)))


def source_upload(session: Session, storage, picture: Picture) -> Upload:
    """The stored image an enhancement of `picture` reads, as an upload row (a generated
    picture's output gets one the first time it is enhanced; it points at the same object)."""
    if picture.upload_id is not None:
        return session.get_one(Upload, picture.upload_id)
    state = picture_state(session, picture)
    if state["storage_key"] is None:
        raise InvalidInput("picture_id", f"picture {picture.id!r} is {state['status']}; only a "
                                         "completed picture can be enhanced")
    job = session.get_one(Generation, picture.generation_id)
    image = validate_image_bytes(storage.get(state["storage_key"]), "picture_id")
    upload = Upload(account_id=picture.account_id, api_key_id=job.api_key_id,
                    storage_key=state["storage_key"], media_type=image.media_type,
                    width=image.width, height=image.height, bytes=len(image.data),
                    sha256=hashlib.sha256(image.data).hexdigest())
    session.add(upload)
    session.flush()
    picture.upload_id = upload.id
    session.flush()
    return upload


def _lock_lineage(session: Session, root_id: str) -> None:
    query = select(Picture.id).where(Picture.id == root_id)
    if not is_sqlite(session.get_bind()):
        query = query.with_for_update()  # SQLite: BEGIN IMMEDIATE already serialises writers
    session.execute(query)


def allocate_lineage(session: Session, source: Picture, variants: int) -> list[tuple[int, int]]:
    """(version, subversion) for each new variant of an enhancement of `source`."""
    _lock_lineage(session, source.root_id)
    if source.generation_id is None:  # the original: a new version
        top = session.scalar(select(func.max(Picture.version))
                             .where(Picture.root_id == source.root_id)) or 0
        return [(top + 1, i) for i in range(variants)]
    top = session.scalar(select(func.max(Picture.subversion)).where(
        Picture.root_id == source.root_id, Picture.version == source.version))
    return [(source.version, top + 1 + i) for i in range(variants)]


def add_enhancement_pictures(session: Session, job: Generation, source: Picture, *,
                             instruction: dict[str, Any], webhook_url: str | None,
                             model_revision: str) -> list[Picture]:
    """One picture per output of `job` (an enhancement of `source`), numbered by lineage."""
    numbers = allocate_lineage(session, source, int(job.request["options"]["variants"]))
    pictures = []
    for index, (version, subversion) in enumerate(numbers):
        picture = Picture(account_id=source.account_id, project_id=source.project_id,
                          parent_id=source.id, root_id=source.root_id, generation_id=job.id,
                          output_index=index, version=version, subversion=subversion,
                          scene_type=source.scene_type, scene_location=source.scene_location,
                          source_instruction=instruction, seed=int(job.seed) + index,
                          model_revision=model_revision, webhook_url=webhook_url,
                          created_at=utcnow())
        session.add(picture)
        pictures.append(picture)
    session.flush()
    return pictures


CONSISTENCY_FIELD = "instruction.consistent_with"


def consistency_reference(session: Session, picture: Picture, reference_id: str) -> Picture:
    """The approved picture of `picture`'s project an enhancement keeps consistent with, or
    `InvalidInput` naming `instruction.consistent_with` (another account's picture reads as
    missing)."""
    reference = session.get(Picture, reference_id)
    if reference is None or reference.account_id != picture.account_id:
        raise InvalidInput(CONSISTENCY_FIELD, f"picture {reference_id!r} was not found")
    if reference.project_id != picture.project_id:
        raise InvalidInput(CONSISTENCY_FIELD, f"picture {reference_id!r} belongs to another "
                                              "project; consistency is kept within a project")
    if reference.approved_at is None:
        raise InvalidInput(CONSISTENCY_FIELD, f"picture {reference_id!r} is not approved; only "
                                              "an approved picture can set the look")
    return reference


def create_enhancement(session_factory, storage, key, picture_id: str, *, action_ids: list[str],
                       prompt: str | None, instruction: dict[str, Any], variants: int,
                       aspect_ratio: str | None, resolution: str | None,
                       webhook_url: str | None, model_revision: str,
                       output_format: str | None = None, consistent_with: str | None = None,
                       idempotency_key: str | None, idempotency_ttl_hours: float
                       ) -> tuple[list[Picture], bool]:
    """Start one enhancement job of `variants` outputs and its pictures; `(pictures, replayed)`.

    Charged, reserved and idempotent through `jobs.create_job`; the pictures are written
    in the job's creation transaction. Aspect ratio, resolution and output format default to the
    project's. With `consistent_with` (checked by `consistency_reference` before anything is
    charged) the job reads that picture's stored image as `input.reference` and takes its seed.
    """
    with transaction(session_factory) as session:
        picture = get_picture(session, key.account_id, picture_id)
        project = session.get_one(Project, picture.project_id)
        upload = source_upload(session, storage, picture)
        options = {"actions": list(action_ids), "variants": variants,
                   "aspect_ratio": aspect_ratio or project.picture_aspect_ratio,
                   "resolution": resolution or project.picture_resolution,
                   "quality": "medium",
                   "output_format": output_format or project.picture_format}
        if prompt:
            options["prompt"] = prompt
        body = {"tool": "enhance", "input": {"image": {"upload_id": upload.id}},
                "options": options}
        if consistent_with is not None:
            reference = consistency_reference(session, picture, consistent_with)
            body["input"]["reference"] = {
                "upload_id": source_upload(session, storage, reference).id}
            if reference.seed is not None:  # an original upload has no seed to share
                options["seed"] = int(reference.seed) % 2**32
        input_url = storage.url(upload.storage_key)
    request = parse_request(body, surface="aixpose")

    def add_pictures(session: Session, job: Generation) -> None:
        source = session.get_one(Picture, picture_id)
        add_enhancement_pictures(session, job, source, instruction=instruction,
                                 webhook_url=webhook_url, model_revision=model_revision)

    job, replayed = jobs.create_job(
        session_factory, key, request, body, idempotency_key=idempotency_key,
        input_image=input_url, surface="aixpose", idempotency_ttl_hours=idempotency_ttl_hours,
        on_created=add_pictures)
    with session_factory() as session:
        return pictures_for_job(session, job.id), replayed


def lineage(session: Session, picture: Picture) -> list[Picture]:
    """`picture` and its ancestors up to the original, newest first."""
    chain = [picture]
    while chain[-1].parent_id is not None:
        chain.append(session.get_one(Picture, chain[-1].parent_id))
    return chain


# ---- feedback, approval and the agent's learned preferences --------------------------------
def get_agent(session: Session, account_id: str) -> AgentSettings:
    agent = session.get(AgentSettings, account_id)
    if agent is None:
        agent = AgentSettings(account_id=account_id, enabled=False, explicit={}, learned={},
                              updated_at=utcnow())
        session.add(agent)
        session.flush()
    return agent


def learn(session: Session, picture: Picture, weight: float) -> None:
    """Move the agent's learned scores of the picture's actions for its scene type by `weight`."""
    actions = (picture.source_instruction or {}).get("actions") or []
    if not actions or not picture.scene_type or weight == 0:
        return
    agent = get_agent(session, picture.account_id)
    learned = {scene: dict(scores) for scene, scores in (agent.learned or {}).items()}
    scores = learned.setdefault(picture.scene_type, {})
    for action_id in actions:
        scores[action_id] = round(scores.get(action_id, 0.0) + weight, 3)
    agent.learned = learned  # a new object: the JSON column sees the change
    agent.updated_at = utcnow()
    session.flush()


def approve(session: Session, picture: Picture) -> Picture:
    if picture_state(session, picture)["status"] != "completed":
        raise InvalidInput("picture_id", "only a completed picture can be approved")
    if picture.approved_at is None:
        picture.approved_at = utcnow()
        learn(session, picture, APPROVAL_WEIGHT)
    session.flush()
    return picture


def give_feedback(session: Session, picture: Picture, rating: int, comment: str | None) -> Picture:
    """Record a 1–5 rating; it moves learned scores by rating − 3 (a re-rating replaces the old)."""
    previous = picture.feedback_rating
    picture.feedback_rating, picture.feedback_comment = rating, comment
    picture.feedback_at = utcnow()
    learn(session, picture, (rating - 3) - ((previous - 3) if previous is not None else 0))
    session.flush()
    return picture


def preferred_actions(agent: AgentSettings, scene_type: str) -> list[str]:
    """Explicit preferences for the scene type, else the best learned action per group (positive
    scores only, at most `MAX_PREFERRED_ACTIONS`, exclusive groups respected)."""
    explicit = (agent.explicit or {}).get(scene_type)
    if explicit:
        return list(explicit)
    scores = (agent.learned or {}).get(scene_type, {})
    chosen: list[str] = []
    for action_id, score in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
        recipe = ACTIONS_BY_ID.get(action_id)
        if score <= 0 or recipe is None or scene_type not in recipe.scene_types:
            continue
        if GROUPS_BY_ID[recipe.group].exclusive and any(
                ACTIONS_BY_ID[c].group == recipe.group for c in chosen):
            continue
        chosen.append(action_id)
        if len(chosen) == MAX_PREFERRED_ACTIONS:
            break
    return chosen


def agent_payload(agent: AgentSettings) -> dict[str, Any]:
    return {"object": "agent", "enabled": agent.enabled,
            "preferences": {"explicit": agent.explicit or {}, "learned": agent.learned or {},
                            "preferred_actions": {scene: preferred_actions(agent, scene)
                                                  for scene in SCENE_TYPES}},
            "updated_at": format_timestamp(agent.updated_at)}


# ---- quick actions ------------------------------------------------------------------------------
def list_quick_actions(session: Session, account_id: str) -> list[dict[str, Any]]:
    own = session.scalars(select(QuickAction).where(QuickAction.account_id == account_id)
                          .order_by(QuickAction.created_at, QuickAction.id))
    return [{**qa, "object": "quick_action", "builtin": True} for qa in BUILTIN_QUICK_ACTIONS] + [
        {"id": qa.id, "object": "quick_action", "name": qa.name, "instruction": qa.instruction,
         "builtin": False} for qa in own]


def get_quick_action(session: Session, account_id: str, quick_action_id: str,
                     field: str = "instruction.quick_action_id") -> dict[str, Any]:
    for qa in BUILTIN_QUICK_ACTIONS:
        if qa["id"] == quick_action_id:
            return qa
    row = session.get(QuickAction, quick_action_id)
    if row is None or row.account_id != account_id:
        raise NotFound(field, f"quick action {quick_action_id!r} was not found")
    return {"id": row.id, "name": row.name, "instruction": row.instruction}


# ---- publishing ---------------------------------------------------------------------------------
def publish(session: Session, project: Project, storage) -> Project:
    """Freeze the project's approved, completed pictures and its completed videos as the
    published media set and emit `project.published`.

    Each entry has a stable URL, its `etag` (sha256 of the bytes behind the URL), `bytes`,
    `media_type` and `updated_at` (when those bytes were first published: an entry whose bytes
    did not change keeps it across republishing, so mirrors can sync incrementally). With the
    organization's branding enabled, pictures are published as branded copies (the logo
    composited as a watermark, `organizations.brand_image`) and videos as branded copies
    (every frame, `organizations.brand_video`).
    """
    from .organizations import brand_image, brand_video, branding_of, get_organization
    from .storage import account_key

    now = utcnow()
    previous = {(m["type"], m["id"]): m for m in project.published_media or []}
    organization = get_organization(session, project.account_id)
    branding = branding_of(organization)
    logo = None
    if branding["enabled"] and organization.logo_upload_id:
        logo = storage.get(session.get_one(Upload, organization.logo_upload_id).storage_key)

    def entry(kind: str, item_id: str, key: str, **extra: Any) -> dict[str, Any]:
        data, media_type = storage.get(key), storage.media_type(key)
        if logo is not None:
            # Named by what it is made from, so republishing reuses it (same bytes, same etag,
            # no second encode).
            recipe = hashlib.sha256(hashlib.sha256(data).digest() + hashlib.sha256(logo).digest()
                                    + json.dumps(branding, sort_keys=True).encode()).hexdigest()
            key = account_key(storage, project.account_id,
                              f"published/{project.id}/{item_id}/{recipe[:32]}."
                              + key.rsplit(".", 1)[-1])
            if storage.exists(key):
                data = storage.get(key)
            else:
                data = brand_image(data, media_type, logo, branding) if kind == "picture" \
                    else brand_video(data, logo, branding)
                storage.put(key, data, media_type)
        etag = hashlib.sha256(data).hexdigest()
        before = previous.get((kind, item_id))
        updated = before["updated_at"] if before and before.get("etag") == etag \
            and before.get("updated_at") else format_timestamp(now)
        return {"type": kind, "id": item_id, "url": storage.url(key), **extra, "etag": etag,
                "bytes": len(data), "media_type": media_type, "updated_at": updated}

    media = []
    approved = session.scalars(select(Picture).where(Picture.project_id == project.id,
                                                     Picture.approved_at.is_not(None))
                               .order_by(Picture.approved_at, Picture.id))
    for picture in approved:
        state = picture_state(session, picture)
        if state["storage_key"] is not None:
            media.append(entry("picture", picture.id, state["storage_key"],
                               version=picture.version, subversion=picture.subversion))
    # Reels are made from approved pictures: the project's completed ones publish with them.
    videos = session.execute(select(Video.id, Generation.output_keys)
                             .join(Generation, Generation.id == Video.generation_id)
                             .where(Video.project_id == project.id,
                                    Generation.status == "completed")
                             .order_by(Video.created_at, Video.id))
    for video_id, output_keys in videos:
        if output_keys:
            media.append(entry("video", video_id, output_keys[0]))
    if not media:
        raise InvalidInput("project_id", "the project has no approved pictures or completed "
                                         "videos to publish")
    project.published_media = media
    project.status = "published"
    project.published_at = now
    session.flush()
    emit_event(session, project.account_id, "project.published",
               {"id": project.id, "name": project.name, "media": media,
                "published_at": format_timestamp(project.published_at)})
    return project


def emit_event(session: Session, account_id: str, event_type: str, data: dict[str, Any],
               webhook_url: str | None = None) -> None:
    """Enqueue a webhook event in the caller's transaction (the webhooks outbox)."""
    enqueue_event(session, account_id, event_type, data, webhook_url=webhook_url)
