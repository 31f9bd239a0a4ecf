"""Webhook event bodies: the event id, the envelope and the `data` of job events.

`{"id": "evt_<ULID>", "type", "created_at", "data"}`. A `picture.*` / `video.*` event's `data` is
the public object as it is when the first attempt renders it (`render_event_data`); after that
the body is frozen, so every retry sends the same bytes (`serialise`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from .db import utcnow
from .errors import NotFound
from .public_objects import picture_payload, video_object
from .tables import Picture, Video
from .timestamps import event_time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id(now: datetime | None = None) -> str:
    """`evt_` + a ULID (48-bit millisecond time + 80 random bits, Crockford base32)."""
    millis = int((now or utcnow()).timestamp() * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "evt_" + "".join(chars)


def event_payload(event_id: str, event_type: str, created_at: datetime,
                  data: dict[str, Any]) -> dict[str, Any]:
    """The event body every delivery of `event_id` sends."""
    return {"id": event_id, "type": event_type, "created_at": event_time(created_at),
            "data": data}


def render_event_data(session: Session, storage, event_type: str,
                      subject_id: str) -> dict[str, Any]:
    """The `data` object of a job event, from the resource as it is now."""
    if event_type.startswith("video."):
        video = session.get(Video, subject_id)
        if video is None:
            raise NotFound("video_id", f"video {subject_id!r} was not found")
        return video_object(session, storage, video)
    return picture_payload(session, session.get_one(Picture, subject_id), storage.url)


def serialise(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
