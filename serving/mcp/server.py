"""The Wixma MCP tools (`/mcp`, Streamable HTTP): the seed's nine tools over the same core as the
HTTP API, plus `wixma_cancel_generation` (the HTTP API's cancel).

Every call authorizes the API key behind the bearer credential (a `wx_live_` key, or the
dedicated key of an OAuth grant) exactly as an HTTP route does: key usable, paid plan, rate
limit, scope; creation tools then go through `core.submissions.submit_generation` (allowed tool,
SSRF-safe URL fetch and validation, atomic reservation of slots, budgets and credits). Arguments
are the seed's flat names (`mode`, `main_image`, `text_prompt`, `quality`, ...), mapped onto the
typed request of `serving.requests`. Failures come back as tool results with `isError` and
the seed's error object as text.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field, WithJsonSchema

from retouch.pipelines.errors import PipelineInputError
from retouch.pipelines.vocabulary import ASPECT_RATIOS
from retouch.serving.core import accounts, credits, jobs, keys
from retouch.serving.core.errors import (Forbidden, InvalidInput, RetouchError, ServiceUnavailable,
                                         Unauthorized, invalid_input_from)
from retouch.serving.requests import (Angle, FilterId, OutputFormat, SeasonValue, TimeValue,
                                      WeatherValue)
from retouch.serving.tasks import TASKS, parse_request
from retouch.serving.core.db import transaction
from retouch.serving.core.pagination import MAX_PAGE_SIZE
from retouch.serving.core.submissions import import_image_url, submit_generation
from retouch.serving.core.tables import Account, ApiKey
from retouch.serving.wixma.schemas import generation_object, upload_object

from .previews import inline_images

log = logging.getLogger(__name__)

SERVER_NAME = "wixma"
INSTRUCTIONS = (
    "Wixma generates, edits, photographs, filters and upscales images as async jobs. Pass input "
    "images as public HTTPS URLs, {upload_id} (from wixma_upload_image) or {generation_id} (a "
    "completed generation); base64 and data URLs are rejected. Creation tools return a "
    "generation id: poll wixma_get_generation until status is completed or failed.")

# ---- argument types (JSON schemas use the seed's names and exact values) ----------------------
IMAGE_ARG_SCHEMA: dict[str, Any] = {
    "description": "An image: a public HTTPS URL string, or {\"url\": ...}, {\"upload_id\": ...} "
                   "(from wixma_upload_image) or {\"generation_id\": ...} (a completed "
                   "generation). PNG, JPEG or WEBP up to 50 MB. No base64, no data URLs.",
    "anyOf": [
        {"type": "string", "pattern": "^https://"},
        {"type": "object", "properties": {"url": {"type": "string", "pattern": "^https://"}},
         "required": ["url"], "additionalProperties": False},
        {"type": "object", "properties": {"upload_id": {"type": "string"}},
         "required": ["upload_id"], "additionalProperties": False},
        {"type": "object", "properties": {"generation_id": {"type": "string"}},
         "required": ["generation_id"], "additionalProperties": False},
    ],
}
Image = Annotated[Any, WithJsonSchema(IMAGE_ARG_SCHEMA)]
OptionalImage = Annotated[Any, WithJsonSchema({**IMAGE_ARG_SCHEMA, "default": None})]
ImageList = Annotated[Any, WithJsonSchema({"type": "array", "items": IMAGE_ARG_SCHEMA,
                                            "minItems": 1, "maxItems": 16})]
OptionalImageList = Annotated[Any, WithJsonSchema({"type": "array", "items": IMAGE_ARG_SCHEMA,
                                                    "maxItems": 3, "default": None})]

Quality = Annotated[Literal["low", "medium", "high"],
                    Field(description="Higher quality costs more credits")]
AspectRatio = Annotated[Literal[tuple(ASPECT_RATIOS)],  # type: ignore[valid-type]
                        Field(description="Output shape; `original` lets the model decide")]
JobStatus = Literal["pending", "processing", "completed", "failed"]
# Beyond the seed (additive): reproduce a result by sending back the `seed` a generation returned.
SeedArgument = Annotated[int | None, Field(
    description="Optional, 0 to 4294967295: the `seed` a generation returned, to reproduce it "
                "(same inputs and models give the same image); omitted: a new random seed")]

SEED_TOOL_NAMES = ("wixma_upload_image", "wixma_generate_image", "wixma_edit_image",
                   "wixma_photographer", "wixma_ai_filter", "wixma_upscale_image",
                   "wixma_get_generation", "wixma_list_generations", "wixma_get_credits")
# Beyond the seed: cancel, as `POST /api/v1/generations/{id}/cancel`.
TOOL_NAMES = SEED_TOOL_NAMES + ("wixma_cancel_generation",)


# ---- results ----------------------------------------------------------------------------------
def json_result(data: dict[str, Any], extra: list | None = None) -> CallToolResult:
    text = TextContent(type="text", text=json.dumps(data))
    return CallToolResult(content=[text, *(extra or [])], structured_content=data)


def error_result(error: RetouchError) -> CallToolResult:
    body = {"object": "error", "error": error.to_dict()}
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(body))],
                          is_error=True)


def _argument_error(error: RetouchError) -> RetouchError:
    """Name the tool argument (`main_image`) rather than the HTTP body path (`input.main_image`)."""
    field = error.details.get("field") if isinstance(error, InvalidInput) else None
    if not isinstance(field, str) or not field.startswith(("input.", "options.")):
        return error
    argument = field.split(".", 1)[1]
    message = error.message.removeprefix(f"{field}: ")
    return InvalidInput(argument, message, details={**error.details, "field": argument},
                        http_status=error.http_status)


def _check_image_argument(value: Any, name: str) -> None:
    """Reject base64 and data URLs up front with a message that says what to send instead."""
    url = value.get("url") if isinstance(value, dict) else value
    if isinstance(url, str) and not url.strip().lower().startswith(("https://", "http://")):
        raise InvalidInput(name, "base64 data and data URLs are not accepted: pass a public "
                                 "HTTPS URL, {\"upload_id\": ...} from wixma_upload_image, or "
                                 "{\"generation_id\": ...}")


def _annotate(**types: Any) -> Callable:
    """Give a tool's arguments types built at run time (e.g. from the task registry)."""
    def apply(function: Callable) -> Callable:
        function.__annotations__.update(types)
        return function

    return apply


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _with_seed(options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """The tool's options plus `seed` when given (the request parser checks its range)."""
    return options if seed is None else {**options, "seed": seed}


# ---- the server -------------------------------------------------------------------------------
def _credential_of(ctx: Context) -> tuple[str, list[str]]:
    """The API key id (and the credential's scopes) the bearer middleware attached."""
    user = None
    try:
        request = ctx.request_context.request
        user = request.scope.get("user") if request is not None else None
    except (ValueError, AttributeError):
        user = None
    token = user.access_token if isinstance(user, AuthenticatedUser) else get_access_token()
    if token is None or not token.subject:
        raise Unauthorized("Missing or invalid Bearer credential.")
    return token.subject, list(token.scopes)


class WixmaTools:
    """The tool implementations, bound to the app's `Services` (no module state)."""

    def __init__(self, services):
        self.services = services

    def authorize(self, ctx: Context, scope: str) -> ApiKey:
        """The per-call checks of every Wixma route, for the key behind this MCP request."""
        key_id, credential_scopes = _credential_of(ctx)
        services = self.services
        with transaction(services.session_factory) as session:
            key = session.get(ApiKey, key_id)
            if key is None or key.surface != "wixma":
                raise Unauthorized("Invalid API key.")
            keys.ensure_key_usable(session, key)
            accounts.require_paid_plan(session.get_one(Account, key.account_id))
        services.rate_limiter.hit(key.id, key.rate_limit_per_minute)
        keys.require_scope(key, scope)
        if scope not in credential_scopes:  # an OAuth token refreshed with fewer scopes
            raise Forbidden(f"This access token is missing the required scope `{scope}`.",
                            details={"required_scope": scope})
        return key

    def run(self, ctx: Context, scope: str, action: Callable[[ApiKey], CallToolResult]
            ) -> CallToolResult:
        try:
            return action(self.authorize(ctx, scope))
        except RetouchError as exc:
            return error_result(_argument_error(exc))
        except PipelineInputError as exc:
            return error_result(_argument_error(invalid_input_from(exc)))
        except Exception:  # never a stack trace to the client: the seed's service_unavailable
            log.exception("MCP tool call failed")
            return error_result(ServiceUnavailable("The service is temporarily unavailable; "
                                                   "try again later."))

    def _generation_data(self, generation) -> dict[str, Any]:
        return generation_object(generation, self.services.storage.url).model_dump(mode="json")

    def create(self, ctx: Context, body: dict[str, Any], images: dict[str, Any]
               ) -> CallToolResult:
        def action(key: ApiKey) -> CallToolResult:
            for name, value in images.items():
                if value is not None:
                    _check_image_argument(value, name)
            request = parse_request(body)
            generation, _ = submit_generation(self.services, key, request, surface="wixma")
            return json_result({"generation": self._generation_data(generation),
                                "next": "Poll wixma_get_generation with this id until status "
                                        "is completed or failed."})

        return self.run(ctx, "generations:create", action)

    def upload(self, ctx: Context, url: str) -> CallToolResult:
        def action(key: ApiKey) -> CallToolResult:
            _check_image_argument(url, "url")
            upload = import_image_url(self.services, key, url, "url")
            ref = {"upload_id": upload.id}
            return json_result({
                "upload_id": upload.id,
                "upload": upload_object(upload, self.services.storage.url(upload.storage_key))
                .model_dump(mode="json"),
                "main_image": ref, "images": [ref]})

        return self.run(ctx, "uploads:create", action)

    def get_generation(self, ctx: Context, generation_id: str) -> CallToolResult:
        def action(key: ApiKey) -> CallToolResult:
            with self.services.session_factory() as session:
                generation = jobs.get_generation(session, key.account_id, generation_id)
            data = self._generation_data(generation)
            images: list[ImageContent] = []
            if generation.status == "completed":
                images = self._inline_outputs(generation.output_keys or [])
            return json_result({"generation": data}, images)

        return self.run(ctx, "generations:read", action)

    def _inline_outputs(self, storage_keys: list[str]) -> list[ImageContent]:
        """The outputs as MCP image content (base64): as stored when small, else a downscaled
        WEBP preview, so the whole result stays well under the SDKs' 1 MiB event limit."""
        return [ImageContent(type="image", data=base64.b64encode(data).decode("ascii"),
                             mime_type=media_type)
                for data, media_type in inline_images(self.services.storage, storage_keys)]

    def cancel_generation(self, ctx: Context, generation_id: str) -> CallToolResult:
        def action(key: ApiKey) -> CallToolResult:
            generation = jobs.cancel_job(self.services.session_factory, key.account_id,
                                         generation_id, field="generation_id")
            return json_result({"generation": self._generation_data(generation)})

        return self.run(ctx, "generations:create", action)

    def list_generations(self, ctx: Context, status: str | None, tool: str | None, limit: int,
                         cursor: str | None) -> CallToolResult:
        def action(key: ApiKey) -> CallToolResult:
            with self.services.session_factory() as session:
                items, next_cursor = jobs.list_generations(
                    session, key.account_id, surface="wixma", status=status, tool=tool,
                    limit=limit, cursor=cursor)
            return json_result({"object": "list",
                                "data": [self._generation_data(g) for g in items],
                                "has_more": next_cursor is not None, "next_cursor": next_cursor})

        return self.run(ctx, "generations:read", action)

    def get_credits(self, ctx: Context) -> CallToolResult:
        def action(key: ApiKey) -> CallToolResult:
            with self.services.session_factory() as session:
                summary = credits.credit_summary(session, key)
            return json_result({"credits": {"object": "credits", **summary}})

        return self.run(ctx, "credits:read", action)


def build_mcp_server(services) -> MCPServer:
    """The MCP server with the seed's nine tools and `wixma_cancel_generation`, bound to
    `services`."""
    # log_level: the SDK calls logging.basicConfig; keep a process without logging config quiet.
    server = MCPServer(SERVER_NAME, title="Wixma", instructions=INSTRUCTIONS, version="1.0.0",
                       log_level="WARNING")
    tools = WixmaTools(services)
    creates = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    # Tools and modes come from the task registry as it stands when the server is built.
    tool_name = Literal[TASKS.tools("wixma")]  # type: ignore[valid-type]
    photographer_mode = Literal[TASKS.modes("photographer")]  # type: ignore[valid-type]
    photographer_description = "Guided photo edits (AI Photographer). Modes: " + "; ".join(
        f"{spec.mode}: {spec.summary}" for spec in TASKS if spec.tool == "photographer") + "."

    @server.tool(annotations=creates)
    def wixma_upload_image(
        url: Annotated[str, Field(description="A public HTTPS image URL (PNG, JPEG or WEBP)")],
        ctx: Context,
    ) -> CallToolResult:
        """Import an image from a public HTTPS URL once. Returns a reusable `upload_id`, a
        `main_image` object to pass to wixma_photographer (or as `image` to wixma_ai_filter and
        wixma_upscale_image) and an `images` array to pass to wixma_edit_image."""
        return tools.upload(ctx, url)

    @server.tool(annotations=creates)
    def wixma_generate_image(
        prompt: Annotated[str, Field(description="What to create, at most 2000 characters")],
        ctx: Context,
        quality: Quality = "medium",
        aspect_ratio: AspectRatio = "original",
        output_format: OutputFormat = "png",
        background: Literal["opaque", "auto"] = "opaque",
        seed: SeedArgument = None,
    ) -> CallToolResult:
        """Create a new image from text (Image Generator). Returns the pending generation."""
        return tools.create(ctx, {
            "tool": "generator", "input": {"prompt": prompt},
            "options": _with_seed({"quality": quality, "aspect_ratio": aspect_ratio,
                                   "output_format": output_format, "background": background},
                                  seed)}, {})

    @server.tool(annotations=creates)
    def wixma_edit_image(
        images: Annotated[ImageList, Field(description="1 to 16 reference images, most "
                                                       "important first")],
        ctx: Context,
        prompt: Annotated[str, Field(description="The edit, at most 4000 characters")] = "",
        quality: Quality = "medium",
        aspect_ratio: AspectRatio = "original",
        output_format: OutputFormat = "png",
        seed: SeedArgument = None,
    ) -> CallToolResult:
        """Edit one or more reference images with a prompt (Image Editor)."""
        image_args = ({f"images[{i}]": v for i, v in enumerate(images)}
                      if isinstance(images, list) else {})
        return tools.create(ctx, {
            "tool": "editor", "input": {"images": images, "prompt": prompt},
            "options": _with_seed({"quality": quality, "aspect_ratio": aspect_ratio,
                                   "output_format": output_format}, seed)}, image_args)

    @server.tool(annotations=creates, description=photographer_description)
    @_annotate(mode=Annotated[photographer_mode, Field(description="The AI Photographer mode")])
    def wixma_photographer(
        mode: str,
        main_image: Annotated[Image, Field(description="The main subject or target scene")],
        ctx: Context,
        secondary_images: Annotated[OptionalImageList, Field(
            description="Up to 3 references (person, garment, object or style)")] = None,
        mask_image: Annotated[OptionalImage, Field(
            description="Required for erase_edit: the area to replace or remove")] = None,
        text_prompt: Annotated[str, Field(
            description="Optional extra instruction (required for location_change); the "
                        "server-side prompts stay active")] = "",
        angle: Annotated[Angle | None, Field(
            description="Required for angle_change: one exact dashboard cube value")] = None,
        time: Annotated[TimeValue | None, Field(
            description="time_change lighting; defaults to Bright Day")] = None,
        season: Annotated[SeasonValue | None, Field(description="time_change season")] = None,
        weather: Annotated[WeatherValue | None, Field(description="time_change weather")] = None,
        quality: Quality = "medium",
        aspect_ratio: AspectRatio = "original",
        output_format: OutputFormat = "png",
        seed: SeedArgument = None,
    ) -> CallToolResult:
        image_args = {"main_image": main_image, "mask_image": mask_image}
        if isinstance(secondary_images, list):
            image_args.update({f"secondary_images[{i}]": v
                               for i, v in enumerate(secondary_images)})
        return tools.create(ctx, {
            "tool": "photographer",
            "input": _without_none({"main_image": main_image, "secondary_images": secondary_images,
                                    "mask_image": mask_image, "text_prompt": text_prompt,
                                    "angle": angle, "time": time, "season": season,
                                    "weather": weather}),
            "options": _with_seed({"mode": mode, "quality": quality,
                                   "aspect_ratio": aspect_ratio,
                                   "output_format": output_format}, seed)}, image_args)

    @server.tool(annotations=creates)
    def wixma_ai_filter(
        filter: Annotated[FilterId, Field(description="A curated Wixma AI filter; its prompt "
                                                      "stays server-side")],
        image: Annotated[Image, Field(description="The photo to filter")],
        ctx: Context,
        quality: Quality = "medium",
        output_format: OutputFormat = "png",
        seed: SeedArgument = None,
    ) -> CallToolResult:
        """Apply a curated AI filter (golden-backlight, blue-hour, polaroid, cinematic-still,
        noir-bw) to a photo."""
        return tools.create(ctx, {
            "tool": "ai_filter", "input": {"image": image, "filter": filter},
            "options": _with_seed({"quality": quality, "output_format": output_format}, seed)},
            {"image": image})

    @server.tool(annotations=creates)
    def wixma_upscale_image(
        image: Annotated[Image, Field(description="The image to upscale")],
        ctx: Context,
        scale: Annotated[Literal[2, 4, "4k"], Field(
            description="2, 4, or \"4k\" (2160p output)")] = 2,
        noise_scale: Annotated[float, Field(
            ge=0.0, le=0.5, description="0 to 0.5; lower keeps closer to the source")] = 0.1,
        output_format: OutputFormat = "png",
        seed: SeedArgument = None,
    ) -> CallToolResult:
        """Upscale an image (Upscaler)."""
        return tools.create(ctx, {
            "tool": "upscaler", "input": {"image": image},
            "options": _with_seed({"scale": scale, "noise_scale": noise_scale,
                                   "output_format": output_format}, seed)}, {"image": image})

    @server.tool(annotations=reads)
    def wixma_get_generation(
        generation_id: Annotated[str, Field(description="The id a creation tool returned")],
        ctx: Context,
    ) -> CallToolResult:
        """One generation's status, progress, cost and error. When completed, the output URL(s)
        (full resolution) and the image(s) inline (a downscaled preview when large)."""
        return tools.get_generation(ctx, generation_id)

    @server.tool(annotations=reads)
    @_annotate(tool=tool_name | None)
    def wixma_list_generations(
        ctx: Context,
        status: JobStatus | None = None,
        tool: str | None = None,
        limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 20,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page")]
        = None,
    ) -> CallToolResult:
        """API-created generations of this account, newest first."""
        return tools.list_generations(ctx, status, tool, limit, cursor)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                             idempotent_hint=False, open_world_hint=False))
    def wixma_cancel_generation(
        generation_id: Annotated[str, Field(description="The id a creation tool returned")],
        ctx: Context,
    ) -> CallToolResult:
        """Cancel a pending or processing generation: it ends failed with error_code
        "canceled" and its credits are refunded in full. A finished generation is an
        invalid_input error and stays as it is."""
        return tools.cancel_generation(ctx, generation_id)

    @server.tool(annotations=reads)
    def wixma_get_credits(ctx: Context) -> CallToolResult:
        """Credit balance, queue capacity (active slots, limit, plan) and this key's budgets."""
        return tools.get_credits(ctx)

    return server
