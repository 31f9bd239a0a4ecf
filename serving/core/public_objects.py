"""The public picture and video objects: what the AIXpose API answers and what `picture.*` /
`video.*` webhook events carry as `data`. A generated picture's and a video's status, progress
and file are their job's (`core.jobs` owns status); these only read them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from .storage import MEDIA_TYPES
from .tables import Generation, Picture, Upload, Video
from .timestamps import format_timestamp

StorageUrl = Callable[[str], str]


def picture_state(session: Session, picture: Picture) -> dict[str, Any]:
    """status, progress, the output's storage key (None until there is one) and error code."""
    if picture.generation_id is None:
        upload = session.get_one(Upload, picture.upload_id)
        return {"status": "completed", "progress": 1.0, "storage_key": upload.storage_key,
                "error_code": None, "width": upload.width, "height": upload.height}
    job = session.get_one(Generation, picture.generation_id)
    key = None
    if job.status == "completed" and picture.output_index < len(job.output_keys):
        key = job.output_keys[picture.output_index]
    return {"status": job.status, "progress": job.progress, "storage_key": key,
            "error_code": job.error_code, "width": None, "height": None}


def picture_payload(session: Session, picture: Picture, url_for: StorageUrl) -> dict[str, Any]:
    """The public picture object (API responses and `picture.*` webhook `data`)."""
    state = picture_state(session, picture)
    return {
        "id": picture.id, "object": "picture", "project_id": picture.project_id,
        "status": state["status"], "progress": state["progress"],
        "public_url": url_for(state["storage_key"]) if state["storage_key"] else None,
        "version": picture.version, "subversion": picture.subversion,
        "scene_type": picture.scene_type, "scene_location": picture.scene_location,
        "source_instruction": picture.source_instruction, "parent_id": picture.parent_id,
        "approved": picture.approved_at is not None,
        "feedback": ({"rating": picture.feedback_rating, "comment": picture.feedback_comment}
                     if picture.feedback_rating is not None else None),
        "media_type": media_type_of(state["storage_key"]),
        "error_code": state["error_code"],
        "seed": picture.seed, "model_revision": picture.model_revision,
        "created_at": format_timestamp(picture.created_at),
    }


def media_type_of(storage_key: str | None) -> str | None:
    """The media type a stored file is served with (from its extension), None without one."""
    if not storage_key or "." not in storage_key:
        return None
    return MEDIA_TYPES.get(storage_key.rsplit(".", 1)[1].lower())


def video_format(job: Generation) -> str:
    """`mp4` or `webm`: what the video's job renders."""
    return ((job.request or {}).get("options") or {}).get("output_format") or "mp4"


def video_object(session: Session, storage, video: Video) -> dict[str, Any]:
    """The public video object (API responses and `video.*` webhook `data`)."""
    job = session.get_one(Generation, video.generation_id)
    public_url = None
    if job.status == "completed" and job.output_keys:
        public_url = storage.url(job.output_keys[0])
    return {
        "id": video.id, "object": "video", "project_id": video.project_id,
        "status": job.status, "progress": job.progress, "public_url": public_url,
        "picture_ids": list(video.picture_ids), "scene_context": video.scene_context,
        "audio": {"voice": video.voice, "background_music": video.background_music,
                  "music_url": video.music_url, "music_track": video.music_key is not None},
        "duration": video.duration_seconds, "fps": video.fps,
        "frame_count": video.duration_seconds * video.fps,
        "aspect_ratio": video.aspect_ratio, "resolution": video.resolution,
        "width": video.width, "height": video.height, "media_type": MEDIA_TYPES[video_format(job)],
        "cost_credits": job.cost_credits, "error_code": job.error_code,
        "webhook_url": video.webhook_url,
        "created_at": format_timestamp(video.created_at),
        "completed_at": format_timestamp(job.finished_at) if job.finished_at else None,
    }
