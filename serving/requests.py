"""The wire protocol of a job: typed requests for every tool, validated once at the edge.

The Wixma tools (`POST /api/v1/generations`: `tool`, `input`, `options`), the AIXpose enhancement
(`tool: "enhance"`) and the reel (`tool: "video"`) bodies are the pydantic models below. Which
model a body is, what a mode requires, its price and where it runs is the task registry's
(`serving.tasks`); `tasks.parse_request(body)` is the one entry point. Requests are serialisable
(`model_dump(mode="json")` is the stored job body) and travel as such to the replica.

Image references stay unresolved here (`ImageRef`); the caller turns them into pixels
(uploads, generations, URLs, or local paths in the batch runner) keyed by `image_fields()`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from retouch.pipelines.vocabulary import (AI_FILTERS, ANGLES, ASPECT_RATIOS, DEFAULT_NOISE_SCALE,
                                          SEASONS, TIMES, WEATHERS)

Quality = Literal["low", "medium", "high"]
OutputFormat = Literal["png", "webp", "jpeg"]
AspectRatio = Literal[tuple(ASPECT_RATIOS)]  # type: ignore[valid-type]
Angle = Literal[ANGLES]  # type: ignore[valid-type]
TimeValue = Literal[TIMES]  # type: ignore[valid-type]
SeasonValue = Literal[tuple(SEASONS)]  # type: ignore[valid-type]
WeatherValue = Literal[tuple(WEATHERS)]  # type: ignore[valid-type]
FilterId = Literal[AI_FILTERS]  # type: ignore[valid-type]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class ImageRef(BaseModel):
    """One image reference: an HTTPS URL, an upload id, a generation id, or (batch only) a path."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["url", "upload_id", "generation_id", "path"]
    value: str

    @classmethod
    def parse(cls, raw: Any, *, allow_paths: bool = False) -> "ImageRef":
        if isinstance(raw, ImageRef):
            return raw
        if isinstance(raw, str) and raw.strip():
            raw = raw.strip()
            if raw.startswith("data:"):
                raise ValueError("data URLs and base64 images are not accepted; upload the "
                                 "file or pass an HTTPS URL")
            if raw.startswith(("https://", "http://")):
                return cls(kind="url", value=raw)
            if allow_paths:
                return cls(kind="path", value=raw)
            raise ValueError("must be an HTTPS URL, {url}, {upload_id} or {generation_id}")
        if isinstance(raw, dict) and len(raw) == 1:
            (key, value), = raw.items()
            if key in ("url", "upload_id", "generation_id", "path") and isinstance(value, str) \
                    and value.strip():
                if key == "path" and not allow_paths:
                    raise ValueError("local paths are only accepted by the batch runner")
                if key == "url":
                    return cls.parse(value, allow_paths=False)
                return cls(kind=key, value=value.strip())
        raise ValueError("must be an HTTPS URL string or one of {url}, {upload_id}, "
                         "{generation_id}")


def _image_ref(value: Any, info) -> ImageRef:
    allow_paths = bool(info.context and info.context.get("allow_paths"))
    return ImageRef.parse(value, allow_paths=allow_paths)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(_Strict):
    def image_fields(self) -> dict[str, ImageRef]:
        """Every image reference in the request, keyed by its field path."""
        found: dict[str, ImageRef] = {}
        for name in type(self.input).model_fields:
            value = getattr(self.input, name)
            if isinstance(value, ImageRef):
                found[f"input.{name}"] = value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ImageRef):
                        found[f"input.{name}[{i}]"] = item
        return found


# ---- generator --------------------------------------------------------------------------------
class GeneratorInput(_Strict):
    prompt: str = Field(min_length=1, max_length=2000)


class GeneratorOptions(_Strict):
    quality: Quality = "medium"
    aspect_ratio: AspectRatio = "original"
    output_format: OutputFormat = "png"
    background: Literal["opaque", "auto"] = "opaque"
    seed: Seed | None = None


class GeneratorRequest(_Request):
    tool: Literal["generator"]
    input: GeneratorInput
    options: GeneratorOptions = GeneratorOptions()


# ---- editor -----------------------------------------------------------------------------------
class EditorInput(_Strict):
    images: list[ImageRef] = Field(min_length=1, max_length=16)
    prompt: str = Field(default="", max_length=4000)

    _refs = field_validator("images", mode="before")(
        lambda cls, v, info: [_image_ref(x, info) for x in v] if isinstance(v, list) else v)


class EditorOptions(_Strict):
    quality: Quality = "medium"
    aspect_ratio: AspectRatio = "original"
    output_format: OutputFormat = "png"
    seed: Seed | None = None


class EditorRequest(_Request):
    tool: Literal["editor"]
    input: EditorInput
    options: EditorOptions = EditorOptions()


# ---- photographer -----------------------------------------------------------------------------
class PhotographerInput(_Strict):
    main_image: ImageRef
    secondary_images: list[ImageRef] = Field(default_factory=list, max_length=3)
    mask_image: ImageRef | None = None
    text_prompt: str = Field(default="", max_length=2000)
    angle: Angle | None = None
    time: TimeValue | None = None
    season: SeasonValue | None = None
    weather: WeatherValue | None = None

    _one = field_validator("main_image", "mask_image", mode="before")(
        lambda cls, v, info: None if v is None else _image_ref(v, info))
    _many = field_validator("secondary_images", mode="before")(
        lambda cls, v, info: [_image_ref(x, info) for x in v] if isinstance(v, list) else v)


class PhotographerOptions(_Strict):
    mode: str  # one of the registry's photographer modes (checked by `tasks.parse_request`)
    quality: Quality = "medium"
    aspect_ratio: AspectRatio = "original"
    output_format: OutputFormat = "png"
    selected_option: str | None = None  # deprecated by the seed; accepted, mapped below
    seed: Seed | None = None


class PhotographerRequest(_Request):
    tool: Literal["photographer"]
    input: PhotographerInput
    options: PhotographerOptions


# ---- upscaler ---------------------------------------------------------------------------------
class UpscalerInput(_Strict):
    image: ImageRef

    _one = field_validator("image", mode="before")(lambda cls, v, info: _image_ref(v, info))


class UpscalerOptions(_Strict):
    scale: Literal[2, 4, "4k"] = 2
    noise_scale: float = Field(default=DEFAULT_NOISE_SCALE, ge=0.0, le=0.5)
    output_format: OutputFormat = "png"
    seed: Seed | None = None

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("2", "4", "4k"):
            v = v.strip().lower()
            return v if v == "4k" else int(v)
        if isinstance(v, bool):
            raise ValueError("must be 2, 4 or \"4k\"")
        return v


class UpscalerRequest(_Request):
    tool: Literal["upscaler"]
    input: UpscalerInput
    options: UpscalerOptions = UpscalerOptions()


# ---- AI filters -------------------------------------------------------------------------------
class FilterInput(_Strict):
    image: ImageRef
    filter: FilterId

    _one = field_validator("image", mode="before")(lambda cls, v, info: _image_ref(v, info))


class FilterOptions(_Strict):
    quality: Quality = "medium"
    output_format: OutputFormat = "png"
    seed: Seed | None = None


class FilterRequest(_Request):
    tool: Literal["ai_filter"]
    input: FilterInput
    options: FilterOptions = FilterOptions()


# The body of `POST /api/v1/generations` (its OpenAPI schema).
WixmaRequest = Annotated[
    Union[GeneratorRequest, EditorRequest, PhotographerRequest, UpscalerRequest, FilterRequest],
    Field(discriminator="tool"),
]


# ---- AIXpose enhancement (`POST /v1/pictures/{id}/enhance`) ------------------------------------
class EnhanceInput(_Strict):
    image: ImageRef
    # The approved picture a consistency goal keeps to (style reference through the IP-Adapter).
    reference: ImageRef | None = None

    _one = field_validator("image", "reference", mode="before")(
        lambda cls, v, info: _image_ref(v, info))


class EnhanceOptions(_Strict):
    actions: list[str] = Field(default_factory=list, max_length=8)
    prompt: str | None = Field(default=None, max_length=2000)
    aspect_ratio: AspectRatio = "original"
    resolution: Literal["1K", "2K", "4K"] = "2K"
    variants: int = Field(default=1, ge=1, le=4)
    quality: Quality = "medium"
    output_format: OutputFormat = "jpeg"
    seed: Seed | None = None


class EnhanceRequest(_Request):
    tool: Literal["enhance"]
    input: EnhanceInput
    options: EnhanceOptions


# ---- AIXpose video (`POST /v1/videos`): a reel of stored pictures --------------------------------
class ReelPicture(_Strict):
    picture_id: str
    storage_key: str
    hold: float = Field(default=1.0, ge=0.2, le=5.0)  # relative time on screen (scene pacing)


class ReelInput(_Strict):
    pictures: list[ReelPicture] = Field(min_length=1)
    music_key: str | None = None


class ReelDirection(_Strict):
    scene_context: str | None = None
    voice: str | None = None
    background_music: str | None = None
    music_url: str | None = None


class ReelOptions(_Strict):
    duration: int
    aspect_ratio: str
    resolution: str
    width: int
    height: int
    fps: int
    output_format: Literal["mp4", "webm"] = "mp4"


class VideoRequest(_Request):
    """A `video` job: storage keys only, so the worker never reads the internet."""

    tool: Literal["video"]
    project_id: str
    input: ReelInput
    direction: ReelDirection = ReelDirection()
    options: ReelOptions
    webhook_url: str | None = None

    def image_fields(self) -> dict[str, ImageRef]:
        return {}  # pictures are read by storage key (`tasks` loads them)
