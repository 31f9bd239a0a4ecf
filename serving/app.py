"""The FastAPI app: `build_app(settings)` wires services, error mapping and the API surfaces.

`Services` (`serving.services`: settings, database, storage, fetcher, rate limiter, executor,
metrics, job signals) lives on `app.state.services`; dependencies reach it through
`serving.deps.ServicesDep`. Surfaces are routers added in `build_app`: Wixma under `/api/v1`;
others mount beside it. On PostgreSQL the app's lifespan also runs a `PostgresListener`, so job
signals reach this process from others.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from retouch.pipelines.vocabulary import IMAGE_MEDIA_TYPES

from .core.errors import InvalidInput
from .core.etags import etag_matches, etag_of
from .core.job_signals import PostgresListener
from .core.webhook_outbox import WebhookWorker
from .errors import error_responses, install_error_handlers
from .metrics import Metrics
from .request_guards import install_request_guards
from .services import Services, build_services
from .settings import Settings

log = logging.getLogger(__name__)


def make_default_executor(services: Services):
    """The executor `settings.executor` names: in-process here, Ray from the runtime module."""
    if services.settings.executor == "inprocess":
        from .executor import InProcessExecutor, runner_factory_for

        return InProcessExecutor(services, runner_factory_for(services.settings),
                                 concurrency=services.settings.dispatcher_concurrency)
    from . import runtime  # the Ray Serve runtime provides `make_executor(services)`

    return runtime.make_executor(services)


def build_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """The HTTP app. Without `services`, builds them (and the configured executor) from settings."""
    if services is None:
        services = build_services(settings)
        services.executor = make_default_executor(services)
    if services.metrics is None:
        services.metrics = Metrics(services.session_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        webhook_worker = WebhookWorker(services)  # sends the webhooks outbox
        webhook_worker.start()
        listener = None
        if services.engine.dialect.name == "postgresql":  # job signals from other processes
            listener = PostgresListener(services.settings.resolved_database_url,
                                        services.job_signals)
            listener.start()
        if services.executor is not None:
            services.executor.start()
        try:
            async with AsyncExitStack() as surfaces:  # e.g. the MCP session manager
                for surface_lifespan in app.state.surface_lifespans:
                    await surfaces.enter_async_context(surface_lifespan())
                yield
        finally:
            if services.executor is not None:
                services.executor.stop()
            if listener is not None:
                listener.stop()
            webhook_worker.stop()

    app = FastAPI(title="retouch — Wixma API v1", version="1.0.0", lifespan=lifespan,
                  description="Async image generation, editing, photography and upscaling. "
                              "Errors: `{object: \"error\", error: {code, message, details}, "
                              "request_id}`.")
    app.state.services = services
    app.state.surface_lifespans = []  # async context factories that surfaces register
    install_request_guards(app, settings)  # inside the request-id middleware added next
    install_error_handlers(app)

    include_surfaces(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format (`serving.metrics`)."""
        from .metrics import CONTENT_TYPE

        return Response(services.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/files/{key:path}", tags=["files"], response_class=Response,
             responses={200: {"content": {media: {} for media in IMAGE_MEDIA_TYPES.values()}},
                        304: {"description": "Not modified: `If-None-Match` matched the `ETag`"},
                        **error_responses(400, 404)})
    def get_file(key: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
        """A stored upload or output (local storage). Keys are unguessable UUID paths. The
        `ETag` is the sha256 of the bytes; `If-None-Match` with it answers 304."""
        storage = services.storage
        if not storage.exists(key):
            raise InvalidInput("key", f"no file {key!r}", http_status=404)
        data = storage.get(key)
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": etag_of(data)}
        if etag_matches(if_none_match, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=storage.media_type(key), headers=headers)

    install_openapi(app)
    return app


def include_surfaces(app: FastAPI) -> None:
    """The public API surfaces. Each is a router (or ASGI app) under its own prefix."""
    from .wixma.routes import router as wixma_router

    app.include_router(wixma_router, prefix="/api/v1")
    from .mcp import install_mcp

    install_mcp(app)  # /mcp, /oauth/*, /.well-known/*, sign-in and consent pages
    from .aixpose import router as aixpose_router

    app.include_router(aixpose_router, prefix="/v1")
    from .dashboard import install_dashboard

    install_dashboard(app)
    # AIXpose (`/v1`), MCP (`/mcp`) and the settings/dashboard pages are included here too.


def install_openapi(app: FastAPI) -> None:
    """OpenAPI with the wire form of image references and the generation body union."""
    from .wixma.routes import openapi_components

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(openapi_components())
            # Validation failures answer 400 invalid_input (the mapper), never FastAPI's 422.
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
