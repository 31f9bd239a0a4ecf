"""`/v1/credits/balance` and `/v1/credits/ledger` (every reservation and refund, newest first,
with its job and the pictures or video it rendered; all entries sum to the balance)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from retouch.serving.core import credits
from retouch.serving.core.tables import ApiKey, Picture, Video
from retouch.serving.core.timestamps import format_timestamp
from retouch.serving.deps import CREDITS, ServicesDep

from .deps import aixpose_key, responses
from .responses import Balance, Ledger
from .schemas import list_payload

router = APIRouter(tags=["aixpose credits"])


@router.get("/credits/balance", response_model=Balance, responses=responses())
def credit_balance(services: ServicesDep,
                   key: Annotated[ApiKey, Depends(aixpose_key(CREDITS))]) -> dict:
    with services.session_factory() as session:
        summary = credits.credit_summary(session, key)
    return {"object": "balance", "balance": summary["balance"], "currency": "credits",
            "queue": summary["queue"], "key": summary["key"]}


@router.get("/credits/ledger", response_model=Ledger, responses=responses())
def credit_ledger(services: ServicesDep,
                  key: Annotated[ApiKey, Depends(aixpose_key(CREDITS))],
                  limit: Annotated[int, Query(ge=1, le=credits.MAX_LEDGER_PAGE)] = 50,
                  cursor: str | None = None) -> dict:
    with services.session_factory() as session:
        entries, next_cursor = credits.list_ledger(session, key.account_id, limit=limit,
                                                   cursor=cursor)
        job_ids = {e.generation_id for e in entries if e.generation_id}
        pictures: dict[str, list[str]] = {}
        videos: dict[str, str] = {}
        if job_ids:
            videos = dict(session.execute(select(Video.generation_id, Video.id)
                                          .where(Video.generation_id.in_(job_ids))).all())
            rows = session.execute(select(Picture.generation_id, Picture.id)
                                   .where(Picture.generation_id.in_(job_ids))
                                   .order_by(Picture.output_index))
            for job_id, picture_id in rows:
                pictures.setdefault(job_id, []).append(picture_id)
    data = [{"id": str(e.id), "object": "ledger_entry", "kind": e.kind, "amount": e.amount,
             "balance_after": e.balance_after, "job_id": e.generation_id,
             "picture_ids": pictures.get(e.generation_id, []),
             "video_id": videos.get(e.generation_id), "memo": e.memo,
             "created_at": format_timestamp(e.created_at)} for e in entries]
    return list_payload(data, next_cursor)
