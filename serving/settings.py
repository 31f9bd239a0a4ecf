"""Server settings (pydantic-settings, env prefix `RETOUCH_`). Built once and injected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETOUCH_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".retouch")
    host: str = "127.0.0.1"
    port: int = 8000
    # Public base URL used to build `output_url`/`upload.url`; defaults to http://host:port.
    public_base_url: str | None = None

    database_url: str | None = None  # default: sqlite:///<home>/retouch.db
    # `retouch serve` migrates the database first; off where `retouch db upgrade` runs once
    # before N API pods start (a Kubernetes init Job), so pods never race on migrations.
    migrate_on_start: bool = True

    storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "retouch"
    s3_region: str = "us-east-1"
    s3_public_base_url: str | None = None  # serve S3 objects from here instead of presigned URLs
    s3_presign_seconds: int = 7 * 24 * 3600  # lifetime of presigned GET URLs (S3's maximum)
    # Bounds on every S3 call, so an endpoint that stops answering fails the call (503 for an
    # upload, the job failed and refunded) instead of hanging: boto3's connect and read timeouts
    # and its total attempts per call (standard retry mode).
    s3_connect_timeout_seconds: float = 5.0
    s3_read_timeout_seconds: float = 20.0
    s3_max_attempts: int = 2
    # Keys under `accounts/<account_id>/` (uploads, outputs, music): per-tenant lifecycle rules,
    # deletion and IAM policies by prefix. Off: the flat `uploads/`, `outputs/` layout.
    storage_account_prefixes: bool = False

    profile: str = "tiny"
    device: str = "cpu"
    model_overrides: dict[str, str] = Field(default_factory=dict)
    model_cache: Path | None = None  # default: <home>/models

    executor: Literal["ray", "inprocess"] = "ray"
    ray_address: str | None = None  # None: start a local Ray for the embedded default
    # A Ray Serve config file (Ray's schema: one application per model family); None: one CPU
    # replica per family. `retouch serve` deploys it unless `deploy_serve_apps` is off, as where
    # a KubeRay RayService deploys the same file; the dispatcher reads application names from it.
    serve_config: Path | None = None
    deploy_serve_apps: bool = True

    allow_private_urls: bool = False
    # Hosts image and music URLs may come from (every hop): names and `*.domain` patterns,
    # comma-separated in the environment; `wixma` is the Wixma reference's list (Supabase, Fal,
    # OpenAI CDN, Cloudinary, Imgix, Unsplash). This server's public host is always allowed
    # when a list is set. Empty (the default): any public host.
    allowed_image_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_timeout_seconds: float = 15.0  # one deadline per image/music URL, redirects included
    # Request bodies above this are refused (413) before they are read; the upload routes allow
    # their documented file size instead.
    max_body_bytes: int = 1024 * 1024
    lease_seconds: float = 30.0
    max_attempts: int = 2
    # Jobs in flight at once (≥ max_batch_size to fill batches). Unset on Ray: the Serve config's
    # in-flight capacity (most replicas × max_ongoing_requests), if larger.
    dispatcher_concurrency: int = 4
    max_batch_size: int = 4  # compatible jobs denoised together (1: no batching)
    batch_wait_timeout_s: float = 0.02  # how long a batch waits for company
    # Per-tool run deadline in seconds (e.g. {"photographer": 600}); a job past it is stopped,
    # failed `deadline_exceeded` and refunded. "*" applies to every tool without its own.
    job_deadlines_s: dict[str, float] = Field(default_factory=dict)
    fault_oom_calls: list[int] = Field(default_factory=list)  # tests: calls that run out of memory
    fault_oom_seeds: list[int] = Field(default_factory=list)  # tests: jobs that always do
    fault_step_delay_s: float = Field(0.0, ge=0.0)  # tests: a pause at every denoising step
    # Tests: the process dies (`os._exit`) at this point of the first job it settles: once its
    # outputs are stored (`outputs_stored`) or inside the settling transaction (`settle_commit`).
    fault_exit_at: Literal["", "outputs_stored", "settle_commit"] = ""
    # On SIGTERM the server stops accepting, waits up to this long for running jobs to finish
    # and puts the rest back to `pending` (lease cleared) for the next server to run.
    drain_seconds: float = 30.0
    # Job wake-ups (`core.job_signals`): an idle dispatcher is woken when a job is created and
    # looks on its own only this often (a safety net); event streams likewise re-read a job's
    # row at least this often, and send a keep-alive comment after this long without an event.
    dispatch_poll_seconds: float = 1.0
    events_poll_seconds: float = 1.0
    events_heartbeat_seconds: float = 15.0
    idempotency_ttl_hours: int = 24
    redis_url: str | None = None  # rate-limit storage; in-memory when unset
    webhook_retry_scale: float = 1.0  # multiplies the webhook retry schedule (tests shrink it)
    webhook_poll_seconds: float = 1.0  # how often the webhook worker looks for due deliveries

    @field_validator("allowed_image_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [h.strip() for h in value if h and h.strip()]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'retouch.db'}"

    @property
    def resolved_public_base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def resolved_model_cache(self) -> Path:
        return self.model_cache or self.home / "models"
