"""AIXpose videos: a reel of a project's pictures, rendered by a `video` job.

`create_video(...)` resolves the pictures (the given ids, or every approved picture of the
project) to their stored images, fetches a user-supplied music track once (SSRF-safe, stored
content-addressed), and creates the job through `jobs.create_job` (credits, slots and
`Idempotency-Key` as for every job) with the `Video` row written in that same transaction. The
job's `VideoRequest` carries storage keys only, so the worker never reads the internet; the task
registry's `video` spec loads them and `pipelines.reel.reel` renders the MP4. A `scene_context`
puts the pictures in property-tour order with per-scene holds (`pipelines.scene_pacing`); the
`voice` text is checked here (`pipelines.voiceover.check_voice`) and spoken by the worker; a
`background_music` text is composed into music by the worker unless a music track is given. A
video's status, progress and file are its job's: `core.jobs` stays the only owner of status.
A project whose `output` is `video` gets its listing reel when published (`start_listing_reel`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from retouch.pipelines.reel import ASPECT_RATIOS, FPS, decode_music, frame_size, music_format
from retouch.pipelines.scene_pacing import PictureScene, plan_tour
from retouch.pipelines.voiceover import check_voice

from ..requests import ReelDirection, ReelInput, ReelOptions, ReelPicture, VideoRequest
from . import jobs
from .errors import InvalidInput, NotFound, pipeline_input_errors
from .pagination import check_limit, newest_first_page
from .projects import get_picture, get_project
from .public_objects import picture_state
from .storage import account_key
from .tables import Generation, Picture, Project, Video

VIDEO_TOOL = "video"
MUSIC_ACCEPT = "audio/wav,audio/x-wav,audio/mpeg,audio/*;q=0.5"
MUSIC_MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}


@dataclass(frozen=True)
class VideoSettings:
    """What a client asked for (validated at the edge by the route's schema)."""

    project_id: str
    picture_ids: list[str] | None = None  # None: every approved picture of the project
    scene_context: str | None = None
    voice: str | None = None
    background_music: str | None = None
    music_url: str | None = None
    duration: int = 15
    aspect_ratio: str = "16:9"
    resolution: str = "720p"
    output_format: str | None = None  # None: the project's `video_format`
    webhook_url: str | None = None


# ---- creation -----------------------------------------------------------------------------------
def video_pictures(session: Session, account_id: str, project_id: str,
                   picture_ids: list[str] | None) -> list[tuple[Picture, str]]:
    """`(picture, storage key)` in reel order; every picture must be completed."""
    project = get_project(session, account_id, project_id)
    if picture_ids is None:
        pictures = list(session.scalars(
            select(Picture).where(Picture.project_id == project.id,
                                  Picture.approved_at.is_not(None))
            .order_by(Picture.approved_at, Picture.id)))
        if not pictures:
            raise InvalidInput("picture_ids", "the project has no approved pictures; approve "
                                              "some or list picture_ids")
    else:
        if not picture_ids:
            raise InvalidInput("picture_ids", "must list at least one picture")
        pictures = []
        for n, picture_id in enumerate(picture_ids):
            picture = get_picture(session, account_id, picture_id, field=f"picture_ids[{n}]")
            if picture.project_id != project.id:
                raise InvalidInput(f"picture_ids[{n}]", f"picture {picture_id!r} belongs to "
                                                        "another project")
            pictures.append(picture)
    resolved = []
    for n, picture in enumerate(pictures):
        state = picture_state(session, picture)
        if state["storage_key"] is None:
            raise InvalidInput(f"picture_ids[{n}]", f"picture {picture.id!r} is "
                                                    f"{state['status']}; only completed "
                                                    "pictures go into a video")
        resolved.append((picture, state["storage_key"]))
    return resolved


def scene_ordered(pictures: list[tuple[Picture, str]], scene_context: str | None
                  ) -> list[tuple[Picture, str, float]]:
    """`(picture, storage key, hold)`: with a `scene_context`, in property-tour order with holds
    by scene (`pipelines.scene_pacing`); without one, as given with equal holds."""
    if not scene_context:
        return [(picture, key, 1.0) for picture, key in pictures]
    plan = plan_tour([PictureScene(p.scene_type, p.scene_location) for p, _ in pictures],
                     scene_context)
    return [(pictures[i][0], pictures[i][1], hold) for i, hold in plan]


def store_music(fetcher, storage, url: str, account_id: str) -> str:
    """Fetch and validate a WAV/MP3 track; stored under its content hash (so a retried request
    makes the same job body). Returns the storage key."""
    data, _ = fetcher.fetch_bytes(url, "music_url", accept=MUSIC_ACCEPT)
    with pipeline_input_errors():
        kind = music_format(data, "music_url")  # InvalidInput("music_url") unless WAV/MP3
        decode_music(data, "music_url")
    key = account_key(storage, account_id,
                      f"uploads/audio/{hashlib.sha256(data).hexdigest()}.{kind}")
    if not storage.exists(key):
        storage.put(key, data, MUSIC_MEDIA_TYPES[kind])
    return key


def video_request(settings: VideoSettings, pictures: list[tuple[Picture, str, float]],
                  music_key: str | None, output_format: str = "mp4") -> VideoRequest:
    """The typed `video` job request: storage keys only, so the worker never reads the internet."""
    with pipeline_input_errors():
        width, height = frame_size(settings.aspect_ratio, settings.resolution)
    return VideoRequest(
        tool=VIDEO_TOOL, project_id=settings.project_id,
        input=ReelInput(pictures=[ReelPicture(picture_id=p.id, storage_key=key, hold=hold)
                                  for p, key, hold in pictures], music_key=music_key),
        direction=ReelDirection(scene_context=settings.scene_context, voice=settings.voice,
                                background_music=settings.background_music,
                                music_url=settings.music_url),
        options=ReelOptions(duration=settings.duration, aspect_ratio=settings.aspect_ratio,
                            resolution=settings.resolution, width=width, height=height,
                            fps=FPS, output_format=output_format),
        webhook_url=settings.webhook_url)


def create_video(services, key, settings: VideoSettings, *,
                 idempotency_key: str | None = None) -> tuple[Video, bool]:
    """Create the video and its job; returns `(video, replayed)`."""
    with pipeline_input_errors():
        check_voice(settings.voice, settings.duration)
    with services.session_factory() as session:
        pictures = scene_ordered(video_pictures(session, key.account_id, settings.project_id,
                                                settings.picture_ids), settings.scene_context)
        output_format = (settings.output_format
                         or get_project(session, key.account_id, settings.project_id).video_format)
    music_key = (store_music(services.fetcher, services.storage, settings.music_url,
                             key.account_id) if settings.music_url else None)
    request = video_request(settings, pictures, music_key, output_format)
    options = request.options

    def add_video(session: Session, job: Generation) -> None:
        video = Video(account_id=key.account_id, project_id=settings.project_id,
                      generation_id=job.id, picture_ids=[p.id for p, _, _ in pictures],
                      scene_context=settings.scene_context, voice=settings.voice,
                      background_music=settings.background_music, music_url=settings.music_url,
                      music_key=music_key, duration_seconds=settings.duration,
                      aspect_ratio=settings.aspect_ratio, resolution=settings.resolution,
                      width=options.width, height=options.height, fps=options.fps,
                      webhook_url=settings.webhook_url, created_at=job.created_at)
        session.add(video)
        session.flush()

    job, replayed = jobs.create_job(
        services.session_factory, key, request, request.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        surface="aixpose", idempotency_ttl_hours=services.settings.idempotency_ttl_hours,
        on_created=add_video)
    with services.session_factory() as session:
        video = session.scalars(select(Video).where(Video.generation_id == job.id)).one()
    return video, replayed


# ---- the listing reel of a video project ---------------------------------------------------------
LISTING_REEL_SECONDS_PER_PICTURE = 3
LISTING_REEL_SECONDS = (6, 30)
ACTIVE_STATUSES = ("pending", "processing", "completed")


def listing_reel_settings(project: Project, picture_count: int) -> VideoSettings:
    """What `publish` renders for a project whose `output` is `video`: every approved picture
    as a property tour (the project's name is its scene context), 3 s a picture (6-30 s), the
    project's aspect ratio where a video has it (else 16:9), 720p, its `video_format`."""
    low, high = LISTING_REEL_SECONDS
    aspect = project.picture_aspect_ratio if project.picture_aspect_ratio in ASPECT_RATIOS \
        else "16:9"
    return VideoSettings(project_id=project.id, scene_context=project.name,
                         duration=min(high, max(low, LISTING_REEL_SECONDS_PER_PICTURE
                                                * picture_count)),
                         aspect_ratio=aspect, resolution="720p", output_format=project.video_format)


def start_listing_reel(services, key, project_id: str, *,
                       idempotency_key: str | None = None) -> Video | None:
    """For a project whose `output` is `video`: start its listing reel unless a video made of
    exactly the approved pictures is pending, rendering or done. None when nothing starts
    (another output, no approved picture, or the reel exists)."""
    with services.session_factory() as session:
        project = get_project(session, key.account_id, project_id)
        if project.output != "video":
            return None
        try:
            approved = video_pictures(session, key.account_id, project_id, None)
        except InvalidInput:
            return None  # nothing approved (or not finished): publish says what is missing
        wanted = sorted(p.id for p, _ in approved)
        made = session.scalars(select(Video.picture_ids).join(
            Generation, Generation.id == Video.generation_id).where(
            Video.project_id == project_id, Generation.status.in_(ACTIVE_STATUSES)))
        if any(sorted(ids) == wanted for ids in made):
            return None
        settings = listing_reel_settings(project, len(approved))
    services.require_executor()
    video, _ = create_video(services, key, settings, idempotency_key=idempotency_key
                            and f"{idempotency_key}:listing-reel")
    return video


# ---- reads --------------------------------------------------------------------------------------
def get_video(session: Session, account_id: str | None, video_id: str) -> Video:
    """The account's video (any account when `account_id` is None), or `NotFound`."""
    video = session.get(Video, video_id) if isinstance(video_id, str) else None
    if video is None or (account_id is not None and video.account_id != account_id):
        raise NotFound("video_id", f"video {video_id!r} was not found")
    return video


def list_videos(session: Session, account_id: str, *, project_id: str | None = None,
                limit: int = 20, cursor: str | None = None) -> tuple[list[Video], str | None]:
    """The account's videos (optionally of one project), newest first; `(items, next_cursor)`."""
    check_limit(limit)
    query = select(Video).where(Video.account_id == account_id)
    if project_id is not None:
        get_project(session, account_id, project_id)
        query = query.where(Video.project_id == project_id)
    return newest_first_page(session, query, Video, limit, cursor)
