"""The job store's tables (SQLAlchemy 2 typed ORM). The Alembic migration in
`retouch.serving.migrations` creates exactly these; change both together.

Ids are strings: accounts `acct_<hex>`, API keys `key_<hex>`, uploads and generations UUIDs.
Every timestamp is stored as UTC and read back as an aware UTC datetime on SQLite and Postgres.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String,
                        Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .db import utcnow

PLANS = ("free", "standard", "plus", "pro")
SURFACES = ("wixma", "aixpose")
KEY_STATUSES = ("active", "paused", "revoked")
JOB_STATUSES = ("pending", "processing", "completed", "failed")
LEDGER_KINDS = ("reserve", "refund", "topup", "adjust")


class UTCDateTime(TypeDecorator):
    """Stores UTC; always returns an aware UTC datetime (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_account_id() -> str:
    return f"acct_{uuid.uuid4().hex[:24]}"


def new_key_id() -> str:
    return f"key_{uuid.uuid4().hex[:24]}"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_account_id)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(16), default="free")
    credit_balance: Mapped[int] = mapped_column(BigInteger, default=0)
    active_slots: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_key_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    surface: Mapped[str] = mapped_column(String(16), default="wixma")
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))  # shown to users, e.g. "wx_live_Ab3d"
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    allowed_tools: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # None: all
    monthly_budget: Mapped[int | None] = mapped_column(BigInteger)
    total_budget: Mapped[int | None] = mapped_column(BigInteger)
    per_request_limit: Mapped[int | None] = mapped_column(BigInteger)
    monthly_used: Mapped[int] = mapped_column(BigInteger, default=0)
    monthly_period: Mapped[str | None] = mapped_column(String(7))  # "YYYY-MM" of monthly_used
    total_used: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    expires_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    storage_key: Mapped[str] = mapped_column(String(500))
    media_type: Mapped[str] = mapped_column(String(100))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_status_created", "status", "created_at"),
        Index("ix_generations_account_created", "account_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    surface: Mapped[str] = mapped_column(String(16), default="wixma")
    tool: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str | None] = mapped_column(String(32))
    request: Mapped[dict[str, Any]] = mapped_column()  # the validated body
    request_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # The denoising step the running job reached, of how many (its current stage); None until a
    # pipeline reports steps.
    step: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    cost_credits: Mapped[int] = mapped_column(BigInteger)
    slots: Mapped[int] = mapped_column(Integer, default=1)
    # The key's budget month this job was charged to, so a refund only undoes that month.
    budget_period: Mapped[str | None] = mapped_column(String(7))
    input_image: Mapped[str | None] = mapped_column(Text)
    output_keys: Mapped[list[Any]] = mapped_column(default=list)
    # {model spec: revision} the outputs were made with (hub commit, sha256:…, random:<seed>)
    model_revisions: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    @property
    def is_terminal(self) -> bool:
        return self.status in ("completed", "failed")


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)  # signed: reserve < 0, refund/topup > 0
    balance_after: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key",
                                       name="uq_idempotency_key_per_api_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- AIXpose (`/v1`): projects, pictures, quick actions, agent, resource idempotency ---------------
PROJECT_OUTPUTS = ("picture", "video")
PICTURE_RESOLUTIONS = ("1K", "2K", "4K")


def new_prefixed_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class Project(Base):
    __tablename__ = "aixpose_projects"
    __table_args__ = (Index("ix_aixpose_projects_account_created", "account_id", "created_at",
                            "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_prefixed_id("prj"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    output: Mapped[str] = mapped_column(String(16), default="picture")
    picture_aspect_ratio: Mapped[str] = mapped_column(String(16), default="original")
    picture_resolution: Mapped[str] = mapped_column(String(4), default="2K")
    # Shared output defaults: the file format of enhancements and videos that name none.
    picture_format: Mapped[str] = mapped_column(String(8), default="jpeg")
    video_format: Mapped[str] = mapped_column(String(8), default="mp4")
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft | published
    published_media: Mapped[list[Any]] = mapped_column(default=list)
    published_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Picture(Base):
    """An original upload (`upload_id`, version 0) or a generated variant (`generation_id` +
    `output_index` into that job's outputs). A generated picture's status is its job's status."""

    __tablename__ = "aixpose_pictures"
    __table_args__ = (
        UniqueConstraint("root_id", "version", "subversion", name="uq_aixpose_picture_lineage"),
        Index("ix_aixpose_pictures_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_prefixed_id("pic"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("aixpose_projects.id"))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("aixpose_pictures.id"))
    root_id: Mapped[str | None] = mapped_column(String(40))  # the original of this lineage
    upload_id: Mapped[str | None] = mapped_column(ForeignKey("uploads.id"))
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"), index=True)
    output_index: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    subversion: Mapped[int] = mapped_column(Integer, default=0)
    scene_type: Mapped[str | None] = mapped_column(String(32))
    scene_location: Mapped[str | None] = mapped_column(String(64))
    source_instruction: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    model_revision: Mapped[str | None] = mapped_column(String(200))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    approved_at: Mapped[datetime | None] = mapped_column()
    feedback_rating: Mapped[int | None] = mapped_column(Integer)
    feedback_comment: Mapped[str | None] = mapped_column(Text)
    feedback_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QuickAction(Base):
    __tablename__ = "aixpose_quick_actions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_prefixed_id("qa"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    instruction: Mapped[dict[str, Any]] = mapped_column()  # {"actions": [...]} or {"prompt": ...}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentSettings(Base):
    """Per account: whether the agent auto-enhances uploads, and its preferences per scene type:
    `explicit` {scene_type: [action ids]} set by PATCH, `learned` {scene_type: {action id: score}}
    moved by approvals and feedback."""

    __tablename__ = "aixpose_agents"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=False)
    explicit: Mapped[dict[str, Any]] = mapped_column(default=dict)
    learned: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Organization(Base):
    """Per account (the AIXpose tenant): its display name, branding (a logo upload composited
    as a watermark onto published pictures when enabled) and default project outputs."""

    __tablename__ = "aixpose_organizations"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # {enabled, placement, opacity, scale}
    branding: Mapped[dict[str, Any]] = mapped_column(default=dict)
    logo_upload_id: Mapped[str | None] = mapped_column(ForeignKey("uploads.id"))
    # {output, picture_aspect_ratio, picture_resolution}: what new projects get when omitted
    default_output: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ResourceIdempotencyRecord(Base):
    """`Idempotency-Key` records for POSTs that create something other than a job (projects,
    pictures, quick actions, feedback ...): same key + same body replays `resource_id`."""

    __tablename__ = "resource_idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key",
                                       name="uq_resource_idempotency_key_per_api_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- webhooks (durable outbox + attempt log) and videos -------------------------------------------
WEBHOOK_EVENT_TYPES = ("picture.completed", "picture.failed", "video.completed", "video.failed",
                       "project.published")
WEBHOOK_DELIVERY_STATUSES = ("pending", "delivered", "failed")


class WebhookSecret(Base):
    """An account's `whsec_` signing secret. After a rotation the previous secret keeps signing
    (a second signature) until `previous_valid_until`, so receivers can switch over."""

    __tablename__ = "webhook_secrets"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_valid_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column()


class WebhookEndpoint(Base):
    """An account-level subscription: every event of the listed types the account emits is
    also sent to `url`, signed with this endpoint's own secret (rotatable like the account's).
    A deleted endpoint keeps its row (`deleted_at`) so its delivery log stays readable."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_account_created", "account_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_prefixed_id("whe"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[list[str]] = mapped_column(JSON)  # subscribed event types
    enabled: Mapped[bool] = mapped_column(default=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_valid_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()


class WebhookDelivery(Base):
    """One event for one URL in the outbox: enqueued in the transaction that caused it, sent by
    the delivery worker until it is `delivered` or its retry schedule runs out (`failed`)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_account_created", "account_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_prefixed_id("whd"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    event_id: Mapped[str] = mapped_column(String(40), unique=True)  # `webhook-id`, `evt_...`
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    # Set when the event goes to a subscribed endpoint (signed with its secret), else the
    # account secret signs it (a per-resource `webhook_url`).
    endpoint_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_endpoints.id"),
                                                    index=True)
    # The exact JSON body sent. Events of a settled job are enqueued with only `subject_id`
    # (the picture or video); the worker renders the body on the first attempt (it needs
    # storage for public URLs) and every retry sends that same body.
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    subject_id: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    schedule_step: Mapped[int] = mapped_column(Integer, default=0)  # next delay in the schedule
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    locked_until: Mapped[datetime | None] = mapped_column()  # a worker is sending it
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)  # 1, 2, ... across retries and redeliveries
    manual: Mapped[bool] = mapped_column(default=False)  # after a manual redelivery
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class Video(Base):
    """A reel rendered by a `video` job; its status is the job's status."""

    __tablename__ = "aixpose_videos"
    __table_args__ = (
        Index("ix_aixpose_videos_project_created", "project_id", "created_at", "id"),
        Index("ix_aixpose_videos_account_created", "account_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: new_prefixed_id("vid"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("aixpose_projects.id"))
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id"), unique=True)
    picture_ids: Mapped[list[Any]] = mapped_column(default=list)
    scene_context: Mapped[str | None] = mapped_column(Text)
    voice: Mapped[str | None] = mapped_column(Text)  # audio direction, recorded as given
    background_music: Mapped[str | None] = mapped_column(Text)
    music_url: Mapped[str | None] = mapped_column(Text)  # a user-supplied track, muxed in
    music_key: Mapped[str | None] = mapped_column(String(500))
    duration_seconds: Mapped[int] = mapped_column(Integer)
    aspect_ratio: Mapped[str] = mapped_column(String(8))
    resolution: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    fps: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- dashboard members and MCP OAuth grants (migration 0004) --------------------------------------
MEMBER_STATUSES = ("active", "disabled")
GRANT_STATUSES = ("active", "revoked")
OAUTH_TOKEN_KINDS = ("access", "refresh")


def new_member_id() -> str:
    return f"mem_{uuid.uuid4().hex[:24]}"


def new_grant_id() -> str:
    return f"grant_{uuid.uuid4().hex[:24]}"


class AccountMember(Base):
    """A person who signs in to the dashboard of one account (argon2 password hash)."""

    __tablename__ = "account_members"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_member_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column()


class MemberSession(Base):
    """A signed-in browser: the cookie holds a random token, the row its SHA-256 (`id`)."""

    __tablename__ = "member_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("account_members.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class OAuthClient(Base):
    """A dynamically registered MCP client (RFC 7591); the secret, if any, only as SHA-256."""

    __tablename__ = "oauth_clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the client_id
    client_name: Mapped[str | None] = mapped_column(String(200))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    registration: Mapped[dict[str, Any]] = mapped_column()  # the registered metadata
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OAuthAuthorizationRequest(Base):
    """A validated `/oauth/authorize` request waiting for a signed-in member's decision."""

    __tablename__ = "oauth_authorization_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("oauth_clients.id"))
    params: Mapped[dict[str, Any]] = mapped_column()  # redirect_uri, state, code_challenge, ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()


class OAuthGrant(Base):
    """A member's approval of one client: a dedicated API key carries its scopes, tools and
    budgets, so every key check applies to the client's calls. Revoking revokes the key."""

    __tablename__ = "oauth_grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_grant_id)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    member_id: Mapped[str | None] = mapped_column(ForeignKey("account_members.id"))
    client_id: Mapped[str] = mapped_column(ForeignKey("oauth_clients.id"))
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    resource: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class OAuthCode(Base):
    """A one-time authorization code (stored as SHA-256) with its PKCE challenge."""

    __tablename__ = "oauth_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("oauth_grants.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(64))
    code_challenge: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(Text)
    redirect_uri_provided_explicitly: Mapped[bool] = mapped_column(default=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    resource: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()


class OAuthToken(Base):
    """An access or refresh token of a grant (stored as SHA-256). Refresh tokens rotate."""

    __tablename__ = "oauth_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    grant_id: Mapped[str] = mapped_column(ForeignKey("oauth_grants.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    resource: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
