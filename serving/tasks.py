"""The task registry: what each tool and mode IS, in one place.

A `TaskSpec` per Wixma tool / photographer mode, AIXpose enhancement and reel holds its typed
request model and edge checks, its pipeline, the model family (= Ray Serve application) that
runs it, its price, slots and output count, how the dispatcher loads its stored inputs, how the
replica decodes them and encodes the outputs, and the batching key that says which jobs can
share a denoising batch. Parsing, pricing, job creation, the deployments, the dispatcher, the MCP
tool descriptions, the dashboard form and the parametrised tests read `TASKS`; nothing else
switches on tool names.

Adding a photographer mode = a pipeline function, one `TASKS.register(photographer_mode(...))`
line below, and a test (docs/design.md, "Adding a mode").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from retouch.pipelines.vocabulary import ANGLES, CAROUSEL_FRAMES, DEFAULT_TIME, TIMES

from . import requests as rq
from .core import pricing
from .core.errors import InvalidInput, invalid_input_from_validation, pipeline_input_errors

# pipeline(store, request, inputs, ctx) -> outputs; a "module:function" path is imported on first
# use, so the API process never imports torch for the pipelines it does not run.
Pipeline = Callable[..., list] | str


def _one(request) -> int:
    return 1


def _no_batching(request) -> Hashable | None:
    return None


def load_image_inputs(session_factory, storage, job, request) -> dict[str, bytes]:
    """The stored bytes of every image reference of the request (`input.images[0]`, ...)."""
    from .core.image_refs import load_job_inputs

    return load_job_inputs(session_factory, storage, request)


def decode_image_inputs(request, raw: dict[str, bytes]) -> dict[str, Any]:
    from retouch.pipelines.images import decode_image

    return {name: decode_image(data, name) for name, data in raw.items()}


def encode_image_outputs(request, outputs: list) -> list[bytes]:
    from retouch.pipelines.images import encode_image

    return [encode_image(image, request.options.output_format) for image in outputs]


@dataclass(frozen=True)
class TaskSpec:
    tool: str  # the job's `tool`
    request_type: type[BaseModel]
    pipeline: Pipeline
    price: Callable[[Any], int]
    mode: str | None = None  # a photographer mode; None for tools with one behaviour
    surface: str = "wixma"  # the public API that creates it
    family: str = "diffusion"  # the Ray Serve application that runs it
    slots: int = 1
    output_count: Callable[[Any], int] = _one
    lists_outputs: bool = False  # the generation object lists every output (`output_urls`)
    check_inputs: Callable[[Any], None] | None = None  # edge checks beyond the model's own
    job_mode: Callable[[Any], str | None] = lambda request: None  # the job's `mode` column
    load_inputs: Callable[..., dict[str, bytes]] = load_image_inputs
    decode_inputs: Callable[[Any, dict[str, bytes]], dict[str, Any]] = decode_image_inputs
    encode_outputs: Callable[[Any, list], list[bytes]] = encode_image_outputs
    batch_key: Callable[[Any], Hashable | None] = _no_batching
    # run_batch(store, requests, inputs, contexts) -> per job: outputs or the exception that
    # failed it; jobs with one (non-None) batch key are denoised together through it.
    run_batch: Pipeline | None = None
    summary: str = ""  # one line for MCP tool descriptions and the dashboard

    @property
    def name(self) -> str:
        return f"{self.tool}.{self.mode}" if self.mode else self.tool

    def run_pipeline(self, store, request, inputs: dict[str, Any], ctx) -> list:
        return _resolve(self.pipeline)(store, request, inputs, ctx)

    def run_pipeline_batch(self, store, requests: list, inputs: list[dict[str, Any]],
                           contexts: list) -> list:
        return _resolve(self.run_batch)(store, requests, inputs, contexts)


def _resolve(pipeline: Pipeline) -> Callable[..., list]:
    if isinstance(pipeline, str):
        module, _, attr = pipeline.partition(":")
        return getattr(importlib.import_module(module), attr)
    return pipeline


class TaskRegistry:
    """Specs by `(tool, mode)`, in registration order."""

    def __init__(self):
        self._specs: dict[tuple[str, str | None], TaskSpec] = {}

    def register(self, spec: TaskSpec) -> TaskSpec:
        key = (spec.tool, spec.mode)
        if key in self._specs:
            raise ValueError(f"task {spec.name!r} is already registered")
        tool_specs = [s for s in self._specs.values() if s.tool == spec.tool]
        if tool_specs and tool_specs[0].request_type is not spec.request_type:
            raise ValueError(f"every {spec.tool} mode takes the tool's request type")
        self._specs[key] = spec
        return spec

    def unregister(self, spec: TaskSpec) -> None:
        self._specs.pop((spec.tool, spec.mode), None)

    @contextmanager
    def registered(self, spec: TaskSpec) -> Iterator[TaskSpec]:
        """`spec` is registered for the duration of the block (tests)."""
        self.register(spec)
        try:
            yield spec
        finally:
            self.unregister(spec)

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(list(self._specs.values()))

    def tools(self, surface: str | None = None) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.tool for s in self if surface in (None, s.surface)))

    def modes(self, tool: str) -> tuple[str, ...]:
        return tuple(s.mode for s in self if s.tool == tool and s.mode is not None)

    def tools_in_family(self, family: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.tool for s in self if s.family == family))

    def families(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.family for s in self))

    def request_type(self, tool: str) -> type[BaseModel] | None:
        return next((s.request_type for s in self if s.tool == tool), None)

    def for_job(self, tool: str, mode: str | None = None) -> TaskSpec:
        """The spec of a stored job (`mode` is the job's column: a photographer mode, or a
        filter id for ai_filter, which has one spec)."""
        spec = self._specs.get((tool, mode)) or self._specs.get((tool, None))
        if spec is None:
            raise KeyError(f"no task {tool!r} (mode {mode!r}) is registered")
        return spec

    def for_request(self, request) -> TaskSpec:
        mode = getattr(request.options, "mode", None) if self.modes(request.tool) else None
        spec = self._specs.get((request.tool, mode))
        if spec is None:
            modes = ", ".join(self.modes(request.tool))
            raise InvalidInput("options.mode", f"must be one of {modes}")
        return spec


TASKS = TaskRegistry()


def parse_request(body: Any, *, surface: str | None = "wixma", allow_paths: bool = False):
    """Validate a job body into its typed request, or raise `InvalidInput` naming the field.

    `surface="wixma"` accepts the Wixma tools (`POST /api/v1/generations`, MCP, the batch
    runner); `surface=None` accepts any registered task (a stored job body).
    """
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object with tool, input and options")
    tools = TASKS.tools(surface)
    tool = body.get("tool")
    if tool not in tools:
        raise InvalidInput("tool", f"must be one of {', '.join(tools)}")
    try:
        request = TASKS.request_type(tool).model_validate(
            body, context={"allow_paths": allow_paths})
    except ValidationError as exc:
        raise invalid_input_from_validation(exc.errors(include_url=False)) from None
    spec = TASKS.for_request(request)
    if spec.check_inputs is not None:
        with pipeline_input_errors():
            spec.check_inputs(request)
    return request


def job_request(job):
    """The typed request of a stored job (its body was validated when it was created)."""
    return parse_request(job.request, surface=None)


def request_seed(request) -> int | None:
    return getattr(request.options, "seed", None)


def price(request) -> int:
    """Credits a typed request costs (its task's price)."""
    return TASKS.for_request(request).price(request)


# ---- the Wixma tools ----------------------------------------------------------------------------
def _quality_price(request) -> int:
    return pricing.QUALITY_PRICES[request.options.quality]


def _same_size_and_steps(request) -> Hashable:
    """Jobs of one task at the same quality and aspect ratio share working size and steps."""
    return (request.tool, getattr(request.options, "mode", None), request.options.quality,
            request.options.aspect_ratio)


TASKS.register(TaskSpec(
    tool="generator", request_type=rq.GeneratorRequest, price=_quality_price,
    pipeline="retouch.pipelines.generate:generate", batch_key=_same_size_and_steps,
    run_batch="retouch.pipelines.generate:generate_batch", summary="text → image"))
TASKS.register(TaskSpec(
    tool="editor", request_type=rq.EditorRequest, price=_quality_price,
    pipeline="retouch.pipelines.edit:edit", summary="1–16 reference images + prompt → image"))


def photographer_mode(mode: str, pipeline: Pipeline, *, summary: str = "",
                      check_inputs: Callable[[Any], None] | None = None,
                      **spec_fields: Any) -> TaskSpec:
    """The spec of one AI Photographer mode (`options.mode`)."""
    return TaskSpec(tool="photographer", mode=mode, request_type=rq.PhotographerRequest,
                    pipeline=pipeline, check_inputs=check_inputs, summary=summary,
                    job_mode=lambda request: request.options.mode,
                    price=spec_fields.pop("price", _quality_price), **spec_fields)


def _require_angle(request) -> None:
    inp, legacy = request.input, request.options.selected_option
    if inp.angle is None and legacy is not None:  # the seed's deprecated selected_option
        if legacy not in ANGLES:
            raise InvalidInput("input.angle", f"{legacy!r} is not a dashboard cube angle")
        inp.angle = legacy
    if inp.angle is None:
        raise InvalidInput("input.angle", "is required for mode angle_change")


def _default_time(request) -> None:
    inp, legacy = request.input, request.options.selected_option
    if inp.time is None and legacy in TIMES:
        inp.time = legacy
    inp.time = inp.time or DEFAULT_TIME


def _require_text_prompt(request) -> None:
    if not request.input.text_prompt.strip():
        raise InvalidInput("input.text_prompt", "is required for mode location_change")


def _require_mask(request) -> None:
    if request.input.mask_image is None:
        raise InvalidInput("input.mask_image", "is required for mode erase_edit")


def _carousel_price(request) -> int:
    return CAROUSEL_FRAMES * _quality_price(request) + pricing.CAROUSEL_PLANNER_CREDITS


for _spec in (
    photographer_mode("person_placement", "retouch.pipelines.placement:person_placement",
                      summary="place the person of a reference into the scene"),
    photographer_mode("angle_change", "retouch.pipelines.angle:angle_change",
                      check_inputs=_require_angle, summary="a new camera angle, needs angle"),
    photographer_mode("cloth_change", "retouch.pipelines.placement:cloth_change",
                      summary="dress the person in a reference garment"),
    photographer_mode("time_change", "retouch.pipelines.atmosphere:time_change",
                      check_inputs=_default_time, summary="time of day, season and weather"),
    photographer_mode("location_change", "retouch.pipelines.placement:location_change",
                      check_inputs=_require_text_prompt,
                      summary="a new location, needs text_prompt"),
    photographer_mode("carousel", "retouch.pipelines.carousel:carousel", slots=2,
                      output_count=lambda request: CAROUSEL_FRAMES, lists_outputs=True,
                      price=_carousel_price,
                      summary=f"{CAROUSEL_FRAMES} images from one photo, 2 slots"),
    photographer_mode("object_placement", "retouch.pipelines.placement:object_placement",
                      summary="place a reference object into the scene"),
    photographer_mode("erase_edit", "retouch.pipelines.erase:erase_edit",
                      check_inputs=_require_mask, summary="replace or remove the masked area, "
                                                          "needs mask_image"),
):
    TASKS.register(_spec)


def _upscale(store, request, inputs, ctx) -> list:
    from retouch.pipelines.upscale import upscale

    options = request.options
    return [upscale(store, inputs["input.image"], options.scale, options.noise_scale, ctx)]


TASKS.register(TaskSpec(
    tool="upscaler", request_type=rq.UpscalerRequest, pipeline=_upscale, family="upscaler",
    price=lambda request: pricing.UPSCALE_PRICES[request.options.scale],
    summary="Real-ESRGAN 2×, 4× or 4k"))
TASKS.register(TaskSpec(
    tool="ai_filter", request_type=rq.FilterRequest, price=_quality_price,
    pipeline="retouch.pipelines.filters:ai_filter",
    job_mode=lambda request: request.input.filter, summary="a curated filter"))


# ---- AIXpose ------------------------------------------------------------------------------------
def _check_instruction(request) -> None:
    from retouch.pipelines.actions import check_instruction

    check_instruction(request.options.actions, request.options.prompt, "options")


TASKS.register(TaskSpec(
    tool="enhance", request_type=rq.EnhanceRequest, surface="aixpose",
    pipeline="retouch.pipelines.enhance:enhance", check_inputs=_check_instruction,
    price=lambda request: pricing.enhancement_price(
        request.options.actions, bool(request.options.prompt), request.options.variants),
    output_count=lambda request: request.options.variants,
    summary="preset actions and/or a prompt, 1–4 variants"))


def _load_reel_inputs(session_factory, storage, job, request) -> dict[str, bytes]:
    """The reel's stored pictures (`input.pictures[i]`) and music track (`input.music`)."""
    named = [(f"input.pictures[{n}]", picture.storage_key)
             for n, picture in enumerate(request.input.pictures)]
    if request.input.music_key:
        named.append(("input.music", request.input.music_key))
    inputs: dict[str, bytes] = {}
    for name, storage_key in named:
        try:
            inputs[name] = storage.get(storage_key)
        except KeyError:
            raise InvalidInput(name, "the stored file is gone") from None
    return inputs


def _decode_reel_inputs(request, raw: dict[str, bytes]) -> dict[str, Any]:
    from retouch.pipelines.images import decode_image

    inputs: dict[str, Any] = {
        f"input.pictures[{n}]": decode_image(raw[f"input.pictures[{n}]"], f"picture_ids[{n}]")
        for n in range(len(request.input.pictures))}
    if "input.music" in raw:
        inputs["input.music"] = raw["input.music"]  # audio bytes: the reel decodes them
    return inputs


TASKS.register(TaskSpec(
    tool="video", request_type=rq.VideoRequest, surface="aixpose",
    pipeline="retouch.pipelines.reel:reel",
    price=lambda request: pricing.video_price(request.options.duration,
                                              request.options.resolution),
    load_inputs=_load_reel_inputs, decode_inputs=_decode_reel_inputs,
    encode_outputs=lambda request, outputs: list(outputs),  # the reel returns the MP4 bytes
    summary="a reel of approved pictures (text to speech for a voice-over, text to music "
            "for background music)"))
