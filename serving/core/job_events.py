"""What a settled job announces: the one call `core.jobs` makes when a job reaches `completed` or
`failed`, inside the transaction that settles it (so an event exists if and only if the job
settled). `jobs` knows nothing about pictures, videos or webhooks beyond this function.

An AIXpose job's pictures and video that carry a `webhook_url` get their `picture.*` /
`video.*` outbox row; its body is rendered on the first delivery attempt (public URLs need
storage) and then frozen. Wixma jobs announce nothing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .tables import Generation, Picture, Video
from .webhook_outbox import enqueue_event


def enqueue_job_events(session: Session, job: Generation) -> None:
    """Enqueue the terminal events of a settled job in the caller's transaction."""
    if job.surface != "aixpose" or job.status not in ("completed", "failed"):
        return
    outcome = "completed" if job.status == "completed" else "failed"
    for video in session.scalars(select(Video).where(Video.generation_id == job.id)):
        enqueue_event(session, job.account_id, f"video.{outcome}", None, video.webhook_url,
                      subject_id=video.id)
    for picture in session.scalars(select(Picture).where(Picture.generation_id == job.id)):
        enqueue_event(session, job.account_id, f"picture.{outcome}", None, picture.webhook_url,
                      subject_id=picture.id)
