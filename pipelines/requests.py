"""Typed generation requests: the seed's `POST /api/v1/generations` body, validated once.

`parse_generation_request(body)` turns the JSON body (`tool`, `input`, `options`) into one of the
typed request classes below, or raises `InvalidInput` naming the bad field (`input.angle`,
`options.aspect_ratio`, ...). The HTTP API, the MCP tools and the batch runner all use it.

Image references stay unresolved here (`ImageRef`); the caller turns them into pixels
(uploads, generations, URLs, or local paths in the batch runner) keyed by `image_fields()`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from .errors import InvalidInput
from .vocabulary import (AI_FILTERS, ANGLES, ASPECT_RATIOS, CAROUSEL_FRAMES, DEFAULT_NOISE_SCALE,
                         DEFAULT_TIME, PHOTOGRAPHER_MODES, SEASONS, TIMES, WEATHERS)

Quality = Literal["low", "medium", "high"]
OutputFormat = Literal["png", "webp", "jpeg"]
AspectRatio = Literal[tuple(ASPECT_RATIOS)]  # type: ignore[valid-type]
PhotographerMode = Literal[PHOTOGRAPHER_MODES]  # type: ignore[valid-type]
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

    @property
    def slots(self) -> int:
        return 1

    @property
    def output_count(self) -> int:
        return 1


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
    mode: PhotographerMode
    quality: Quality = "medium"
    aspect_ratio: AspectRatio = "original"
    output_format: OutputFormat = "png"
    selected_option: str | None = None  # deprecated by the seed; accepted, mapped below
    seed: Seed | None = None


class PhotographerRequest(_Request):
    tool: Literal["photographer"]
    input: PhotographerInput
    options: PhotographerOptions

    @model_validator(mode="after")
    def _mode_requirements(self) -> "PhotographerRequest":
        mode, inp, legacy = self.options.mode, self.input, self.options.selected_option
        if mode == "angle_change":
            if inp.angle is None and legacy is not None:
                if legacy not in ANGLES:
                    raise InvalidInput("input.angle", f"{legacy!r} is not a dashboard cube angle")
                inp.angle = legacy
            if inp.angle is None:
                raise InvalidInput("input.angle", "is required for mode angle_change")
        if mode == "time_change":
            if inp.time is None and legacy in TIMES:
                inp.time = legacy
            inp.time = inp.time or DEFAULT_TIME
        if mode == "location_change" and not inp.text_prompt.strip():
            raise InvalidInput("input.text_prompt", "is required for mode location_change")
        if mode == "erase_edit" and inp.mask_image is None:
            raise InvalidInput("input.mask_image", "is required for mode erase_edit")
        return self

    @property
    def slots(self) -> int:
        return 2 if self.options.mode == "carousel" else 1

    @property
    def output_count(self) -> int:
        return CAROUSEL_FRAMES if self.options.mode == "carousel" else 1


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


ToolRequest = Annotated[
    Union[GeneratorRequest, EditorRequest, PhotographerRequest, UpscalerRequest, FilterRequest],
    Field(discriminator="tool"),
]
_ADAPTER: TypeAdapter = TypeAdapter(ToolRequest)


def _field_path(loc: tuple) -> str:
    # The discriminated union puts the tool tag first: ('generator', 'input', 'prompt').
    parts = loc[1:] if loc and loc[0] in _TOOL_TAGS else loc
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


_TOOL_TAGS = ("generator", "editor", "photographer", "upscaler", "ai_filter")


def parse_generation_request(body: Any, *, allow_paths: bool = False):
    """Validate a generations body into a typed request, or raise `InvalidInput` naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object with tool, input and options")
    tool = body.get("tool")
    if tool not in _TOOL_TAGS:
        raise InvalidInput("tool", f"must be one of {', '.join(_TOOL_TAGS)}")
    try:
        return _ADAPTER.validate_python(body, context={"allow_paths": allow_paths})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidInput(_field_path(tuple(first["loc"])), message) from None


def request_seed(request) -> int | None:
    return getattr(request.options, "seed", None)


def parse_job_request(body: Any, *, allow_paths: bool = False):
    """A stored job body of any surface: the Wixma tools, plus AIXpose `enhance` jobs (which
    `parse_generation_request` does not accept: they are created through `/v1` only)."""
    if isinstance(body, dict) and body.get("tool") == "enhance":
        from .enhance import parse_enhance_request

        return parse_enhance_request(body, allow_paths=allow_paths)
    return parse_generation_request(body, allow_paths=allow_paths)
