"""carousel: a 10-shot plan from the planner model, then each frame through the matching pipeline.

1. Describe the main image honestly from what the store's models measure: the segmenter's labels
   covering at least `LABEL_MIN_SHARE` of the frame, the three dominant colours (median-cut
   quantisation, named by the nearest entry of `COLOUR_NAMES`) and the brightness.
2. The planner LM (greedy decoding, so deterministic) gets `prompts.CAROUSEL_PLANNER_INSTRUCTION`
   with that description, the client's `text_prompt` and the allowed values, and answers one JSON
   object (the assistant turn is started with `{"shots": [`; decoding stops as soon as the text
   can no longer be JSON or the object is closed). The object is validated against `ShotPlan`
   (pydantic: exactly 10 shots, every value from the seed's vocabulary, distinct prompts). On
   invalid output the planner is asked again with the validation error (`PLANNER_ATTEMPTS` in
   all); if it is still invalid, the individually valid shots it wrote are kept and the rest
   are taken from `FALLBACK_PLAN` (a fixed, varied photographer's set). `CarouselPlan.sources`
   records "planner" or "fallback" per shot. With the tiny random planner the same code runs and
   ends on the fallback plan.
3. Each shot runs the pipeline that matches it (`Shot.pipeline`, dispatched through
   `FRAME_PIPELINES`): a camera angle other than eye level, front → the angle_change render
   (depth reprojection + inpaint); else a time, season or weather → the time_change render (depth
   ControlNet img2img); else → a reframe (img2img at `FRAME_STRENGTH`). The shot's `framing`
   first crops the source around the subject (`FRAMING_ZOOM`: wide/full keep the whole photo,
   medium 1.5×, close-up 2.2×, detail 3×). The shot prompt plus the client's `text_prompt` is the
   prompt of every path; frame i uses seed `ctx.seed + i`. Each frame carries its shot in
   `image.info` (`shot`, `shot_prompt`, `shot_source`, `pipeline`, `frame`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, \
    model_validator

from . import prompts
from .angle import render_angle
from .atmosphere import render_atmosphere
from .common import RunContext, pipe_working_size, run_diffusion, steps_for_strength
from .errors import PipelineInputError
from .sizes import fit_to_size, output_size, resize_to
from .vocabulary import ANGLE_HEIGHTS, ANGLE_SIDES, ANGLES, CAROUSEL_FRAMES, SEASONS, TIMES, \
    WEATHERS

MAIN = "input.main_image"
FRAME_STRENGTH = 0.55
LABEL_MIN_SHARE = 0.02
PLANNER_ATTEMPTS = 2  # the first answer, then one retry with the validation error
PLANNER_MAX_NEW_TOKENS = 900  # ~10 shots of ~70 tokens of JSON
PLAN_PREFIX = '{"shots": ['
FRONT = "eye level, front"
FRAMINGS = ("wide", "full", "medium", "close-up", "detail")
FRAMING_ZOOM = {"wide": 1.0, "full": 1.0, "medium": 1.5, "close-up": 2.2, "detail": 3.0}
COLOUR_NAMES = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (200, 30, 30),
    "orange": (240, 140, 30), "yellow": (240, 220, 40), "green": (40, 160, 60),
    "teal": (0, 128, 128), "blue": (40, 80, 200), "navy": (20, 30, 90), "purple": (120, 50, 160),
    "pink": (240, 150, 190), "brown": (120, 80, 40), "beige": (220, 200, 160),
}


# ---- the plan schema -------------------------------------------------------------------------
class Shot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=8, max_length=300)
    framing: Literal[FRAMINGS] = "full"
    angle: Literal[ANGLES] = FRONT
    time: Literal[TIMES] | None = None
    season: Literal[tuple(SEASONS)] | None = None
    weather: Literal[tuple(WEATHERS)] | None = None

    @field_validator("prompt")
    @classmethod
    def _reads_as_text(cls, value: str) -> str:
        value = value.strip()
        words = [w for w in value.split() if sum(c.isalpha() for c in w) >= 2]
        if len(words) < 3 or sum(c.isalpha() or c.isspace() for c in value) < 0.7 * len(value):
            raise ValueError("must be a sentence of at least three words")
        return value

    @property
    def pipeline(self) -> str:
        """Which render this shot needs: "angle", "atmosphere" or "reframe"."""
        if self.angle != FRONT:
            return "angle"
        if self.time or self.season or self.weather:
            return "atmosphere"
        return "reframe"


class ShotPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shots: list[Shot] = Field(min_length=CAROUSEL_FRAMES, max_length=CAROUSEL_FRAMES)

    @model_validator(mode="after")
    def _distinct(self) -> "ShotPlan":
        if len({shot.prompt.lower() for shot in self.shots}) < len(self.shots):
            raise ValueError("shot prompts must be distinct")
        return self


FALLBACK_PLAN: tuple[Shot, ...] = (
    Shot(prompt="wide establishing shot of the whole scene, subject small in frame",
         framing="wide"),
    Shot(prompt="full-body hero shot from a low angle, confident pose", angle="low angle, front"),
    Shot(prompt="three-quarter view from the left, candid movement",
         angle="eye level, front-left", framing="medium"),
    Shot(prompt="close-up portrait, shallow depth of field", framing="close-up"),
    Shot(prompt="the same scene in warm golden hour light", time="Golden Hour"),
    Shot(prompt="high angle shot looking down, environmental context",
         angle="high angle, front-right"),
    Shot(prompt="detail shot of the outfit texture and accessories", framing="detail"),
    Shot(prompt="moody blue hour frame under a cloudy sky", time="Blue Hour", weather="Cloudy"),
    Shot(prompt="three-quarter view from the right, natural expression",
         angle="eye level, front-right", framing="medium"),
    Shot(prompt="candid storytelling frame at dusk in autumn colours", time="Dusk",
         season="Autumn"),
)
assert ShotPlan(shots=list(FALLBACK_PLAN))


@dataclass(frozen=True)
class CarouselPlan:
    description: str
    shots: tuple[Shot, ...]
    sources: tuple[str, ...]  # "planner" | "fallback", one per shot
    attempts: tuple[str, ...] = ()  # why each planner answer was rejected ("" = accepted)


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    if images.get(MAIN) is None:
        raise PipelineInputError(MAIN, "is required")


# ---- describing the photo --------------------------------------------------------------------
def _colour_name(rgb: tuple[int, int, int]) -> str:
    return min(COLOUR_NAMES, key=lambda name: sum((a - b) ** 2 for a, b in
                                                   zip(COLOUR_NAMES[name], rgb)))


@dataclass(frozen=True)
class PhotoFacts:
    description: str
    subject_box: tuple[float, float, float, float] | None  # fractions; None: nobody found


def describe_photo(store, image: Image.Image) -> PhotoFacts:
    small = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    segmentation = store.segmenter()(small)
    shares = np.bincount(segmentation.labels.ravel(), minlength=len(segmentation.names))
    shares = shares / shares.sum()
    labels = [segmentation.names[i].lower() for i in np.argsort(-shares, kind="stable")
              if shares[i] >= LABEL_MIN_SHARE and segmentation.names[i] != "Background"]
    quantised = small.quantize(colors=3, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette()[:9]
    counts = sorted(quantised.getcolors(), reverse=True)
    colours = []
    for _, index in counts:
        name = _colour_name(tuple(palette[3 * index: 3 * index + 3]))
        if name not in colours:
            colours.append(name)
    brightness = float(np.asarray(small.convert("L")).mean()) / 255.0
    light = "dark" if brightness < 0.3 else "bright" if brightness > 0.7 else "evenly lit"
    subject = ", ".join(labels[:6]) if labels else "no person detected"
    person = ~segmentation.mask("Background")
    box = None
    if person.mean() >= LABEL_MIN_SHARE:
        rows, cols = np.nonzero(person.any(axis=1))[0], np.nonzero(person.any(axis=0))[0]
        box = (cols[0] / 64, rows[0] / 64, (cols[-1] + 1) / 64, (rows[-1] + 1) / 64)
    return PhotoFacts(f"{light} photo; visible: {subject}; dominant colours: "
                      f"{', '.join(colours)}", box)


def describe_image(store, image: Image.Image) -> str:
    return describe_photo(store, image).description


# ---- planning --------------------------------------------------------------------------------
def json_prefix_state(text: str) -> str:
    """"complete" (the plan object is closed, maybe with trailing text), "open" (could still
    become a plan) or "invalid" (no continuation makes it one). A cheap scanner of the plan's
    shape, `{"shots": [{...scalars...}, ...]}`, used to stop decoding as soon as the answer
    has gone wrong (a random model stops within a few tokens)."""
    stack: list[str] = []
    in_string = escaped = False
    started = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ch in "\n\r":
                return "invalid"
            continue
        if ch.isspace():
            continue
        if not started:
            if ch != "{":
                return "invalid"
            started = True
        if ch == '"':
            in_string = True
        elif ch in "{[":
            # depth 1: the plan object; 2: the shots list (of objects); 3: a shot (scalars only)
            wanted = {0: "{", 1: "[", 2: "{"}.get(len(stack))
            if ch != wanted:
                return "invalid"
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return "invalid"
            if not stack:
                return "complete"
        elif ch not in ",:-+.0123456789eEtrufalsn":
            return "invalid"
    return "open"


def extract_plan_json(text: str):
    """The first JSON object of `text` (a JSON decode, not free-text parsing); ValueError if none."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the answer")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


def validate_plan(text: str) -> ShotPlan:
    """The planner's answer as a `ShotPlan`; ValueError with a short reason when it is not one."""
    value = extract_plan_json(text)
    try:
        return ShotPlan.model_validate(value)
    except ValidationError as exc:
        reasons = [f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}"
                   for e in exc.errors()[:3]]
        raise ValueError("; ".join(reasons)) from None


def salvage_shots(text: str) -> list[Shot]:
    """The individually valid shots of an answer that is not a valid plan as a whole."""
    try:
        value = extract_plan_json(text)
    except ValueError:
        return []
    items = value.get("shots") if isinstance(value, dict) else None
    shots: list[Shot] = []
    for item in items if isinstance(items, list) else []:
        try:
            shot = Shot.model_validate(item)
        except ValidationError:
            continue
        if shot.prompt.lower() not in {s.prompt.lower() for s in shots}:
            shots.append(shot)
    return shots


class _PlanComplete:
    """Stops generation once the JSON object is closed or can no longer be JSON (a model that
    writes noise stops within a few tokens), or as soon as the job is cancelled."""

    def __init__(self, tokenizer, prompt_length: int, is_cancelled=lambda: False):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.is_cancelled = is_cancelled

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        if self.is_cancelled():
            return True
        text = self.tokenizer.decode(input_ids[0][self.prompt_length:], skip_special_tokens=True)
        return json_prefix_state(PLAN_PREFIX + text) != "open"


def planner_instruction(description: str, text_prompt: str) -> str:
    example = FALLBACK_PLAN[1].model_dump_json(exclude_defaults=False)
    return prompts.CAROUSEL_PLANNER_INSTRUCTION.format(
        description=description, request=text_prompt.strip() or "a varied carousel of the photo",
        framings=", ".join(FRAMINGS), heights=", ".join(ANGLE_HEIGHTS),
        sides=", ".join(ANGLE_SIDES), times=", ".join(TIMES), seasons=", ".join(SEASONS),
        weathers=", ".join(WEATHERS), example=example)


@torch.inference_mode()
def run_planner(store, messages: list[dict[str, str]], ctx: RunContext | None = None) -> str:
    """One planner answer to the chat `messages`, starting with `PLAN_PREFIX` (returned whole)."""
    tokenizer, model = store.planner()
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    inputs = tokenizer(text + PLAN_PREFIX, return_tensors="pt", add_special_tokens=False)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    from transformers import StoppingCriteriaList

    prompt_length = inputs["input_ids"].shape[1]
    output = model.generate(
        **inputs, max_new_tokens=PLANNER_MAX_NEW_TOKENS, do_sample=False,
        stopping_criteria=StoppingCriteriaList([_PlanComplete(
            tokenizer, prompt_length, ctx.is_cancelled if ctx else (lambda: False))]),
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if ctx is not None:
        ctx.check_cancelled()
    return PLAN_PREFIX + tokenizer.decode(output[0][prompt_length:], skip_special_tokens=True)


def plan_carousel(store, image: Image.Image, text_prompt: str, ctx: RunContext | None = None,
                  facts: PhotoFacts | None = None) -> CarouselPlan:
    facts = facts or describe_photo(store, image)
    first = planner_instruction(facts.description, text_prompt)
    messages = [{"role": "user", "content": first}]
    rejected: list[str] = []
    answer = ""
    for _ in range(PLANNER_ATTEMPTS):
        answer = run_planner(store, messages, ctx)
        try:
            plan = validate_plan(answer)
        except ValueError as exc:
            rejected.append(str(exc))
            # The retry repeats the instruction with the reason (not the rejected answer, which
            # may be long noise), so the prompt stays within the planner's context.
            messages = [{"role": "user", "content": first + "\n" +
                         prompts.CAROUSEL_PLANNER_RETRY.format(error=str(exc)[:300])}]
            continue
        return CarouselPlan(facts.description, tuple(plan.shots), ("planner",) * CAROUSEL_FRAMES,
                            tuple(rejected) + ("",))
    planned = salvage_shots(answer)[:CAROUSEL_FRAMES]
    taken = {shot.prompt.lower() for shot in planned}
    fallback = [shot for shot in FALLBACK_PLAN if shot.prompt.lower() not in taken]
    shots = planned + fallback[:CAROUSEL_FRAMES - len(planned)]
    sources = ["planner"] * len(planned) + ["fallback"] * (CAROUSEL_FRAMES - len(planned))
    return CarouselPlan(facts.description, tuple(shots), tuple(sources), tuple(rejected))


# ---- rendering the frames --------------------------------------------------------------------
def frame_source(source: Image.Image, framing: str,
                 subject_box: tuple[float, float, float, float] | None) -> Image.Image:
    """`source` cropped for `framing`: the same aspect, `FRAMING_ZOOM` times closer, centred on
    the subject (the photo's centre when nobody was found), kept inside the photo."""
    zoom = FRAMING_ZOOM[framing]
    if zoom <= 1.0:
        return source
    w, h = source.size
    cw, ch = max(8, round(w / zoom)), max(8, round(h / zoom))
    left, top, right, bottom = subject_box or (0.0, 0.0, 1.0, 1.0)
    cx = (left + right) / 2 * w
    # Close-ups and details favour the upper part of the subject (face, shoulders).
    cy = (top + (bottom - top) * (0.3 if framing != "medium" else 0.45)) * h
    x0 = int(round(min(max(cx - cw / 2, 0), w - cw)))
    y0 = int(round(min(max(cy - ch / 2, 0), h - ch)))
    return source.crop((x0, y0, x0 + cw, y0 + ch))


@dataclass(frozen=True)
class FrameJob:
    source: Image.Image  # already framed
    size: tuple[int, int]
    shot: Shot
    text_prompt: str
    quality: str
    seed_offset: int


def _shot_text(job: FrameJob) -> str:
    extra = job.text_prompt.strip()
    return f"{job.shot.prompt}; {extra}" if extra else job.shot.prompt


def angle_frame(store, job: FrameJob, progress, ctx: RunContext) -> Image.Image:
    return render_angle(store, job.source, job.size, job.shot.angle, _shot_text(job), job.quality,
                        progress, ctx, seed_offset=job.seed_offset)


def atmosphere_frame(store, job: FrameJob, progress, ctx: RunContext) -> Image.Image:
    shot = job.shot
    return render_atmosphere(store, job.source, job.size, shot.time, shot.season, shot.weather,
                             _shot_text(job), job.quality, progress, ctx,
                             seed_offset=job.seed_offset)


def reframe_frame(store, job: FrameJob, progress, ctx: RunContext) -> Image.Image:
    pipe = store.img2img()
    work = pipe_working_size(store, pipe, job.size)
    steps = steps_for_strength(store.quality_steps[job.quality], FRAME_STRENGTH)
    frame = run_diffusion(
        pipe, progress, ctx, seed_offset=job.seed_offset,
        prompt=prompts.carousel_frame_prompt(job.shot.prompt, job.text_prompt),
        negative_prompt=prompts.NEGATIVE_PROMPT, image=fit_to_size(job.source, work),
        strength=FRAME_STRENGTH, num_inference_steps=steps)
    return resize_to(frame, job.size)


FRAME_PIPELINES: dict[str, Callable[..., Image.Image]] = {
    "angle": angle_frame, "atmosphere": atmosphere_frame, "reframe": reframe_frame}


def carousel(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    source = images[MAIN].convert("RGB")
    facts = describe_photo(store, source)
    plan = plan_carousel(store, source, request.input.text_prompt, ctx, facts)
    ctx.report(0.1)
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=source.size)
    frames = []
    span = 0.9 / CAROUSEL_FRAMES
    for i, (shot, origin) in enumerate(zip(plan.shots, plan.sources)):
        job = FrameJob(frame_source(source, shot.framing, facts.subject_box), size, shot,
                       request.input.text_prompt, request.options.quality, i)
        frame = FRAME_PIPELINES[shot.pipeline](
            store, job, ctx.stage(0.1 + i * span, 0.1 + (i + 1) * span), ctx)
        frame.info.update({"shot": shot.model_dump_json(), "shot_prompt": shot.prompt,
                           "shot_source": origin, "pipeline": shot.pipeline, "frame": i + 1})
        frames.append(frame)
    ctx.report(1.0)
    return frames
