"""AIXpose request bodies (validated at the edge; errors name the field) and the payload
builders of response shapes (their documented models: `responses`).

Responses are the resource objects at the top level (`project.id`, `picture.id`); lists are
`{"object": "list", "data": [...], "has_more", "next_cursor"}`; an enhancement answers the list
of the new pictures in that same list shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from retouch.pipelines.actions import SCENE_LOCATIONS, SCENE_TYPES
from retouch.pipelines.vocabulary import IMAGE_MEDIA_TYPES
from retouch.serving.core.storage import PICTURE_FORMATS, VIDEO_FORMATS
from retouch.serving.requests import AspectRatio
from retouch.serving.core.timestamps import format_timestamp

SceneType = Literal[SCENE_TYPES]  # type: ignore[valid-type]
SceneLocation = Literal[SCENE_LOCATIONS]  # type: ignore[valid-type]
Resolution = Literal["1K", "2K", "4K"]
PictureFormat = Literal[PICTURE_FORMATS]  # type: ignore[valid-type]
VideoFormat = Literal[VIDEO_FORMATS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    output: Literal["picture", "video"] = "picture"
    picture_aspect_ratio: AspectRatio = "original"
    picture_resolution: Resolution = "2K"
    picture_format: PictureFormat = "jpeg"
    video_format: VideoFormat = "mp4"


class UrlSource(_Strict):
    type: Literal["url"]
    url: str = Field(min_length=1, max_length=4000)


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal[tuple(sorted(IMAGE_MEDIA_TYPES.values()))]  # type: ignore[valid-type]
    data: str = Field(min_length=1)


class PictureCreate(_Strict):
    source: UrlSource | Base64Source = Field(discriminator="type")
    scene_type: SceneType
    scene_location: SceneLocation | None = None
    webhook_url: str | None = None


class PictureForm(_Strict):
    """The multipart form fields besides `file`."""

    scene_type: SceneType
    scene_location: SceneLocation | None = None
    webhook_url: str | None = None


class Instruction(_Strict):
    source: Literal["preset", "custom", "quick_action"]
    actions: list[str] | None = Field(default=None, max_length=8)
    prompt: str | None = Field(default=None, max_length=2000)
    quick_action_id: str | None = None
    consistent_with: str | None = Field(
        default=None, min_length=1, max_length=100,
        description="Consistency goal: the id of an approved picture of the same project whose "
                    "look (IP-Adapter style reference) and seed family the variants keep")

    @model_validator(mode="after")
    def _needs(self) -> "Instruction":
        if self.source == "preset" and not self.actions:
            raise ValueError("a preset instruction needs `actions`")
        if self.source == "custom" and not (self.prompt or "").strip():
            raise ValueError("a custom instruction needs `prompt`")
        if self.source == "quick_action" and not self.quick_action_id:
            raise ValueError("a quick_action instruction needs `quick_action_id`")
        return self


class EnhancementCreate(_Strict):
    instruction: Instruction
    variants: int = Field(default=1, ge=1, le=4)
    aspect_ratio: AspectRatio | None = None
    resolution: Resolution | None = None
    output_format: PictureFormat | None = None  # the project's `picture_format` when omitted
    webhook_url: str | None = None


class FeedbackCreate(_Strict):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=2000)


class AgentPatch(_Strict):
    enabled: bool | None = None
    preferences: dict[SceneType, list[str]] | None = None


class BrandingPatch(_Strict):
    enabled: bool | None = None
    logo: UrlSource | Base64Source | None = Field(
        default=None, discriminator="type", description="The watermark image (PNG with "
                                                        "transparency works best)")
    placement: Literal["top_left", "top_right", "bottom_left", "bottom_right", "center"] | None \
        = None
    opacity: float | None = Field(default=None, ge=0.0, le=1.0)
    scale: float | None = Field(default=None, ge=0.02, le=1.0,
                                description="Logo width as a fraction of the picture's width")


class DefaultOutputPatch(_Strict):
    output: Literal["picture", "video"] | None = None
    picture_aspect_ratio: AspectRatio | None = None
    picture_resolution: Resolution | None = None
    picture_format: PictureFormat | None = None
    video_format: VideoFormat | None = None


class OrganizationPatch(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    branding: BrandingPatch | None = None
    default_output: DefaultOutputPatch | None = None


class QuickActionInstruction(_Strict):
    actions: list[str] | None = Field(default=None, max_length=8)
    prompt: str | None = Field(default=None, max_length=2000)


class QuickActionCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    instruction: QuickActionInstruction


def project_payload(project) -> dict[str, Any]:
    return {"id": project.id, "object": "project", "name": project.name,
            "output": project.output, "picture_aspect_ratio": project.picture_aspect_ratio,
            "picture_resolution": project.picture_resolution,
            "picture_format": project.picture_format, "video_format": project.video_format,
            "status": project.status,
            "published_media": project.published_media or [],
            "published_at": format_timestamp(project.published_at)
            if project.published_at else None,
            "created_at": format_timestamp(project.created_at)}


def list_payload(data: list[Any], next_cursor: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": next_cursor is not None,
            "next_cursor": next_cursor}


def parse_model(model: type[BaseModel], data: Any) -> Any:
    """Validate `data` into `model`, or `InvalidInput` naming the field (`source.url`, ...)."""
    from pydantic import ValidationError

    from retouch.serving.core.errors import InvalidInput, field_path

    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        parts = list(first["loc"])
        if len(parts) >= 2 and parts[0] == "source" and parts[1] in ("url", "base64"):
            parts.pop(1)  # the union's tag
        raise InvalidInput(field_path(parts), first["msg"].removeprefix("Value error, ")) from None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined (for an `openapi_extra` request body,
    where `#/$defs/...` references would not resolve)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            if "propertyName" in node and "mapping" in node:  # a discriminator: refs by name
                return {"propertyName": node["propertyName"]}
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
