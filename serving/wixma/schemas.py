"""Wixma API v1 protocol models: the exact response shapes, and the error shape for OpenAPI.

Request bodies are the typed models of `retouch.serving.requests` (one discriminated union on
`tool`); responses are built here from table rows so every route shapes them the same way.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from retouch.serving.core.timestamps import format_timestamp
from retouch.serving.errors import (ErrorDetail, ErrorResponse,  # noqa: F401 (the error shape)
                                    cancel_conflict_response, error_responses)
from retouch.serving.tasks import TASKS


# ---- uploads ----------------------------------------------------------------------------------
class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    url: str
    media_type: str
    width: int
    height: int
    bytes: int
    created_at: str


class UploadResponse(BaseModel):
    object: Literal["response"] = "response"
    request_id: str
    upload: UploadObject


def upload_object(upload, url: str) -> UploadObject:
    return UploadObject(id=upload.id, url=url, media_type=upload.media_type, width=upload.width,
                        height=upload.height, bytes=upload.bytes,
                        created_at=format_timestamp(upload.created_at))


# ---- generations ------------------------------------------------------------------------------
class GenerationObject(BaseModel):
    id: str
    object: Literal["generation"] = "generation"
    status: Literal["pending", "processing", "completed", "failed"]
    tool: str
    mode: str | None = Field(default=None, description="AI Photographer mode (photographer only)")
    output_url: str | None = None
    output_urls: list[str] | None = Field(
        default=None, description="All outputs of a carousel (10 URLs), in order")
    input_image: str | None = None
    cost_credits: int
    progress: float = Field(ge=0.0, le=1.0, description="0..1 while pending/processing")
    error_code: str | None = None
    error: str | None = None
    seed: int | None = Field(
        default=None, description="The seed the job ran with (the request's `options.seed`, or "
                                  "one drawn at creation); send it back to reproduce the output")
    model_revisions: dict[str, str] | None = Field(
        default=None, description="What each model was loaded from ({model: hub commit, "
                                  "`sha256:…` of a local twin, or `random:<seed>`}); null until "
                                  "the job has completed")
    created_at: str


class GenerationResponse(BaseModel):
    object: Literal["response"] = "response"
    request_id: str
    generation: GenerationObject


class GenerationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[GenerationObject]
    has_more: bool
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; null on the last page")
    request_id: str


def generation_object(generation, url_for) -> GenerationObject:
    """Shape one `Generation` row; `url_for(storage_key)` gives an object's public URL."""
    output_urls = [url_for(key) for key in (generation.output_keys or [])]
    lists_outputs = TASKS.for_job(generation.tool, generation.mode).lists_outputs
    return GenerationObject(
        id=generation.id, status=generation.status, tool=generation.tool,
        mode=generation.mode if TASKS.modes(generation.tool) else None,
        output_url=output_urls[0] if output_urls else None,
        output_urls=output_urls if lists_outputs else None,
        input_image=generation.input_image, cost_credits=generation.cost_credits,
        progress=1.0 if generation.status == "completed" else float(generation.progress or 0.0),
        error_code=generation.error_code, error=generation.error,
        seed=generation.seed, model_revisions=generation.model_revisions,
        created_at=format_timestamp(generation.created_at))


# ---- credits ----------------------------------------------------------------------------------
class QueueCapacity(BaseModel):
    active: int = Field(description="Generation slots held by pending/processing jobs")
    limit: int
    plan: str


class MonthlyBudget(BaseModel):
    used: int
    limit: int | None = Field(description="null: no monthly budget")
    period: str = Field(description="The budget month, YYYY-MM (UTC)")


class TotalBudget(BaseModel):
    used: int
    limit: int | None = Field(description="null: no lifetime budget")


class KeyBudget(BaseModel):
    id: str
    monthly: MonthlyBudget
    total: TotalBudget
    per_request_limit: int | None


class CreditsObject(BaseModel):
    object: Literal["credits"] = "credits"
    balance: int
    queue: QueueCapacity
    key: KeyBudget


class CreditsResponse(BaseModel):
    object: Literal["response"] = "response"
    request_id: str
    credits: CreditsObject
