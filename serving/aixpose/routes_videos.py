"""`/v1/videos`: create a reel from a project's pictures, read one, list them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from retouch.pipelines.reel import ASPECT_RATIOS, MAX_DURATION_S, MAX_PICTURES, MIN_DURATION_S
from retouch.pipelines.reel import RESOLUTIONS as VIDEO_RESOLUTIONS
from retouch.pipelines.voiceover import MAX_VOICE_CHARS, VOICE_CHARS_PER_SECOND
from retouch.serving.core import jobs, videos
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.public_objects import video_object
from retouch.serving.core.tables import ApiKey
from retouch.serving.core.webhook_outbox import check_webhook_url
from retouch.serving.deps import READ, WRITE, ServicesDep
from retouch.serving.errors import cancel_conflict_response
from retouch.serving.event_streams import MEDIA_TYPE as EVENT_STREAM, job_event_stream

from .deps import IdempotencyKey, aixpose_key, responses
from .responses import VideoList, VideoObject
from .schemas import VideoFormat, _Strict, list_payload

router = APIRouter(tags=["aixpose videos"])


class VideoCreate(_Strict):
    project_id: str = Field(min_length=1, max_length=40)
    picture_ids: list[str] | None = Field(
        default=None, min_length=1, max_length=MAX_PICTURES,
        description="The pictures in reel order; omit for every approved picture")
    scene_context: str | None = Field(
        default=None, max_length=2000,
        description="The listing in words; given, the pictures play as a property tour "
                    "(exterior first, then living spaces, rooms, outdoor, details) with longer "
                    "holds for establishing shots and the rooms it names")
    voice: str | None = Field(
        default=None, min_length=1, max_length=MAX_VOICE_CHARS,
        description="The voice-over's words, spoken by the self-hosted text-to-speech model "
                    f"over the music (ducked); at most {VOICE_CHARS_PER_SECOND} characters per "
                    "second of video after the first and before the last half second")
    background_music: str | None = Field(
        default=None, max_length=500,
        description="Music direction in words (\"soft piano\"): without `music_url`, the "
                    "self-hosted text-to-music model composes the reel's music from it")
    music_url: str | None = Field(default=None, max_length=2000,
                                  description="A WAV or MP3 track to mux into the reel; it wins "
                                              "over `background_music`")
    duration: int = Field(default=15, ge=MIN_DURATION_S, le=MAX_DURATION_S,
                          description="Seconds; the reel has duration × 24 frames")
    aspect_ratio: Literal[tuple(ASPECT_RATIOS)] = "16:9"  # type: ignore[valid-type]
    resolution: Literal[tuple(VIDEO_RESOLUTIONS)] = "720p"  # type: ignore[valid-type]
    output_format: VideoFormat | None = Field(
        default=None, description="`mp4` (H.264 + AAC) or `webm` (VP9 + Opus); the project's "
                                  "`video_format` when omitted")
    webhook_url: str | None = None


@router.post("/videos", status_code=201, response_model=VideoObject,
             responses=responses(404, 409, replay=VideoObject))
def create_video(body: Annotated[VideoCreate, Body()], response: Response, services: ServicesDep,
                 key: Annotated[ApiKey, Depends(aixpose_key(WRITE))],
                 idempotency_key: IdempotencyKey = None) -> dict:
    """Start rendering an MP4 reel: a camera move over each picture, crossfades between them,
    the music track when `music_url` is given (else music composed from `background_music`)
    and a spoken voice-over of `voice` (the music ducked under it); `scene_context` plays the pictures as a scene-paced tour. Same
    `Idempotency-Key` + body → the same video (200)."""
    check_webhook_url(services.fetcher, body.webhook_url)
    services.require_executor()
    video, replayed = videos.create_video(services, key, videos.VideoSettings(**body.model_dump()),
                                          idempotency_key=idempotency_key)
    if replayed:
        response.status_code = 200
    with services.session_factory() as session:
        return video_object(session, services.storage, video)


@router.get("/videos/{video_id}", response_model=VideoObject, responses=responses(404))
def get_video(video_id: str, services: ServicesDep,
              key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """Status, progress and, once completed, the MP4's `public_url`."""
    with services.session_factory() as session:
        video = videos.get_video(session, key.account_id, video_id)
        return video_object(session, services.storage, video)


@router.get("/videos/{video_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {EVENT_STREAM: {}}, "description":
                             "Server-Sent Events: `status` and `progress` events, then a "
                             "`video` event with the video object"},
                       **responses(404)})
def video_events(video_id: str, services: ServicesDep,
                 key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                 last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                 ) -> Response:
    """Server-Sent Events of the video's render (`status`, `progress`), ending with a `video`
    event carrying the video object."""
    with services.session_factory() as session:
        job_id = videos.get_video(session, key.account_id, video_id).generation_id

    def final_video() -> dict:
        return get_video(video_id, services, key)

    return job_event_stream(services, job_id, last_event_id, "video", final_video)


@router.post("/videos/{video_id}/cancel", response_model=VideoObject,
             responses={**responses(404), **cancel_conflict_response()})
def cancel_video(video_id: str, services: ServicesDep,
                 key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """Cancel a pending or rendering video: `failed` with `error_code` `canceled`, refunded in
    full, a `video.failed` webhook. A finished video answers 409 `invalid_input`."""
    with services.session_factory() as session:
        job_id = videos.get_video(session, key.account_id, video_id).generation_id
    jobs.cancel_job(services.session_factory, key.account_id, job_id, field="video_id",
                    subject=f"video {video_id!r}")
    return get_video(video_id, services, key)


@router.get("/videos", response_model=VideoList, responses=responses(404))
def list_videos(services: ServicesDep, key: Annotated[ApiKey, Depends(aixpose_key(READ))],
                project_id: str | None = None,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
                cursor: str | None = None) -> dict:
    """Newest first, optionally of one project; pass `next_cursor` back as `cursor`."""
    with services.session_factory() as session:
        items, next_cursor = videos.list_videos(session, key.account_id, project_id=project_id,
                                                limit=limit, cursor=cursor)
        return list_payload([video_object(session, services.storage, v) for v in items],
                            next_cursor)
