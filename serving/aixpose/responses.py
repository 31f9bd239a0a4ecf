"""AIXpose response bodies, as `/openapi.json` documents them (each route's `response_model`).

They describe what the payload builders return (`schemas.project_payload`,
`core.public_objects`, `core.webhook_outbox.delivery_object`, ...); field for field, with the
builder's own key names. Nullable fields are `X | None` and required: every builder emits them.
A key the builder emits only sometimes is a `NotRequired` key of a TypedDict, so validation
never adds it.

Nothing a builder returns can be lost: objects keep undeclared keys (`extra="allow"`), and the
tests' response audit (`tests/response_audit.py`, on every AIXpose answer in every test) fails on
any key not declared here and on any body a response model changes.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

KEEP_EXTRA = ConfigDict(extra="allow")
Timestamp = str  # ISO 8601 UTC, e.g. 2026-06-07T10:00:00.000Z
Item = TypeVar("Item")


class _Object(BaseModel):
    model_config = KEEP_EXTRA


class Page(_Object, Generic[Item]):
    """A list in the seed's shape; `next_cursor` goes back as `cursor` for the next page."""

    object: Literal["list"]
    data: list[Item]
    has_more: bool
    next_cursor: str | None


# ---- projects -----------------------------------------------------------------------------------
@with_config(KEEP_EXTRA)
class PublishedMedia(TypedDict):
    """One published file; `version` and `subversion` only for pictures."""

    type: Literal["picture", "video"]
    id: str
    url: str
    version: NotRequired[int]
    subversion: NotRequired[int]
    etag: str
    bytes: int
    media_type: str
    updated_at: Timestamp


class ProjectObject(_Object):
    id: str
    object: Literal["project"]
    name: str
    output: str
    picture_aspect_ratio: str
    picture_resolution: str
    picture_format: str
    video_format: str
    status: str = Field(description="draft | published")
    published_media: list[PublishedMedia]
    published_at: Timestamp | None
    created_at: Timestamp


class ProjectList(Page[ProjectObject]):
    pass


class PublishedMediaList(Page[PublishedMedia]):
    published_at: Timestamp | None


# ---- pictures -----------------------------------------------------------------------------------
@with_config(KEEP_EXTRA)
class InstructionRecord(TypedDict, total=False):
    """The instruction a picture was made with, as given (plus `origin: agent` when the agent
    made it; a quick action's `actions` copied in)."""

    source: str
    actions: list[str]
    prompt: str
    quick_action_id: str
    consistent_with: str
    origin: str


class Feedback(_Object):
    rating: int
    comment: str | None


class PictureObject(_Object):
    id: str
    object: Literal["picture"]
    project_id: str
    status: str
    progress: float
    public_url: str | None
    version: int
    subversion: int
    scene_type: str | None
    scene_location: str | None
    source_instruction: InstructionRecord | None
    parent_id: str | None
    approved: bool
    feedback: Feedback | None
    media_type: str | None
    error_code: str | None
    seed: int | None
    model_revision: str | None
    created_at: Timestamp


class PictureList(Page[PictureObject]):
    pass


class LineageStep(_Object):
    id: str
    object: Literal["lineage_step"]
    parent_id: str | None
    version: int
    subversion: int
    source_instruction: InstructionRecord | None
    seed: int | None
    model_revision: str | None
    job_id: str | None
    status: str


class Lineage(Page[LineageStep]):
    pass


# ---- videos -------------------------------------------------------------------------------------
class VideoAudio(_Object):
    voice: str | None
    background_music: str | None
    music_url: str | None
    music_track: bool


class VideoObject(_Object):
    id: str
    object: Literal["video"]
    project_id: str
    status: str
    progress: float
    public_url: str | None
    picture_ids: list[str]
    scene_context: str | None
    audio: VideoAudio
    duration: int
    fps: int
    frame_count: int
    aspect_ratio: str
    resolution: str
    width: int
    height: int
    media_type: str
    cost_credits: int
    error_code: str | None
    webhook_url: str | None
    created_at: Timestamp
    completed_at: Timestamp | None


class VideoList(Page[VideoObject]):
    pass


# ---- catalog ------------------------------------------------------------------------------------
class CatalogModel(_Object):
    id: str
    object: Literal["model"]
    family: str
    source: str
    revision: str | None
    purpose: str
    enhancements: str | None


class CatalogModels(Page[CatalogModel]):
    profile: str


class CatalogAction(_Object):
    id: str
    label: str
    scene_types: list[str]
    credits: int = Field(description="per variant")
    region: str


class ActionGroup(_Object):
    id: str
    label: str
    exclusive: bool
    actions: list[CatalogAction]


class CatalogActions(Page[ActionGroup]):
    scene_types: list[str]
    scene_locations: list[str]
    custom_prompt_credits: int


class AspectRatioObject(_Object):
    id: str
    object: Literal["aspect_ratio"]
    label: str
    sizes: dict[str, list[int]] | None = Field(
        description="[width, height] per resolution; null for `original` (the source's)")


class AspectRatioList(Page[AspectRatioObject]):
    pass


class OutputFormat(_Object):
    id: str
    object: Literal["output_format"]
    output: Literal["picture", "video"]
    media_type: str
    default: bool


class OutputFormatList(Page[OutputFormat]):
    pass


# ---- agent and quick actions --------------------------------------------------------------------
class AgentPreferences(_Object):
    explicit: dict[str, list[str]]
    learned: dict[str, dict[str, float]] = Field(description="score per action id")
    preferred_actions: dict[str, list[str]]


class AgentObject(_Object):
    object: Literal["agent"]
    enabled: bool
    preferences: AgentPreferences
    updated_at: Timestamp


@with_config(KEEP_EXTRA)
class QuickActionSteps(TypedDict, total=False):
    actions: list[str]
    prompt: str


class QuickActionObject(_Object):
    id: str
    object: Literal["quick_action"]
    name: str
    instruction: QuickActionSteps
    builtin: bool


class QuickActionList(Page[QuickActionObject]):
    pass


# ---- credits ------------------------------------------------------------------------------------
class QueueSlots(_Object):
    active: int
    limit: int
    plan: str


class MonthlyUse(_Object):
    used: int
    limit: int | None
    period: str = Field(description="YYYY-MM (UTC)")


class TotalUse(_Object):
    used: int
    limit: int | None


class KeyUse(_Object):
    id: str
    monthly: MonthlyUse
    total: TotalUse
    per_request_limit: int | None


class Balance(_Object):
    object: Literal["balance"]
    balance: int
    currency: Literal["credits"]
    queue: QueueSlots
    key: KeyUse


class LedgerEntry(_Object):
    id: str
    object: Literal["ledger_entry"]
    kind: str
    amount: int = Field(description="signed: a reservation < 0, a refund or top-up > 0")
    balance_after: int
    job_id: str | None
    picture_ids: list[str]
    video_id: str | None
    memo: str | None
    created_at: Timestamp


class Ledger(Page[LedgerEntry]):
    pass


# ---- organization -------------------------------------------------------------------------------
class Branding(_Object):
    enabled: bool
    logo_url: str | None
    placement: str
    opacity: float
    scale: float


@with_config(KEEP_EXTRA)
class DefaultOutput(TypedDict, total=False):
    """Only the defaults the organization has set."""

    output: str
    picture_aspect_ratio: str
    picture_resolution: str
    picture_format: str
    video_format: str


class OrganizationObject(_Object):
    id: str
    object: Literal["organization"]
    name: str
    branding: Branding
    default_output: DefaultOutput
    updated_at: Timestamp


# ---- webhooks -----------------------------------------------------------------------------------
class WebhookSecret(_Object):
    secret: str


class RotatedWebhookSecret(WebhookSecret):
    previous_secret_valid_until: Timestamp | None


class DeliveryAttempt(_Object):
    attempt: int
    manual: bool
    status_code: int | None
    error: str | None
    duration_ms: int
    at: Timestamp


class WebhookDelivery(_Object):
    id: str
    object: Literal["webhook_delivery"]
    event_id: str
    event_type: str
    url: str
    endpoint_id: str | None
    status: str
    attempt_count: int
    next_attempt_at: Timestamp | None
    delivered_at: Timestamp | None
    created_at: Timestamp
    payload: dict[str, Any] | None = Field(description="the event body as sent")
    attempts: list[DeliveryAttempt]


class WebhookDeliveryList(Page[WebhookDelivery]):
    pass


class WebhookEndpoint(_Object):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    description: str | None
    events: list[str]
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp


class WebhookEndpointWithSecret(WebhookEndpoint):
    """Right after creating or rotating: the `whsec_` secret, shown only then."""

    secret: str
    previous_secret_valid_until: Timestamp | None


class WebhookEndpointList(Page[WebhookEndpoint]):
    pass


class DeletedWebhookEndpoint(_Object):
    id: str
    object: Literal["webhook_endpoint"]
    deleted: Literal[True]
