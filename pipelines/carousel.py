"""carousel: a 10-shot plan from the planner model, then 10 image-to-image frames.

1. Describe the main image honestly from what the store's models measure: the segmenter's labels
   covering at least `LABEL_MIN_SHARE` of the frame, the three dominant colours (median-cut
   quantisation, named by the nearest entry of `COLOUR_NAMES`) and the brightness.
2. The planner LM (greedy decoding, so deterministic) gets `prompts.CAROUSEL_PLANNER_INSTRUCTION`
   with that description and the client's `text_prompt`, and writes numbered shot lines.
3. `parse_shot_lines` keeps lines like "3. close-up of ..." that read as text. Missing shots are
   taken from `prompts.CAROUSEL_FALLBACK_SHOTS` in order; `CarouselPlan.sources` records for each
   shot whether it came from the "planner" or the "fallback" list.
4. Frame i is img2img of the main image with the shot prompt (plus `text_prompt` as an additional
   instruction) and seed `ctx.seed + i`. Each frame carries its shot in `image.info`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import prompts
from .common import RunContext, pipe_working_size, run_diffusion, steps_for_strength
from .errors import PipelineInputError
from .sizes import fit_to_size, output_size, resize_to
from .vocabulary import CAROUSEL_FRAMES

MAIN = "input.main_image"
FRAME_STRENGTH = 0.55
LABEL_MIN_SHARE = 0.02
PLANNER_MAX_NEW_TOKENS = 360  # ~10 lines of ~30 tokens
COLOUR_NAMES = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (200, 30, 30),
    "orange": (240, 140, 30), "yellow": (240, 220, 40), "green": (40, 160, 60),
    "teal": (0, 128, 128), "blue": (40, 80, 200), "navy": (20, 30, 90), "purple": (120, 50, 160),
    "pink": (240, 150, 190), "brown": (120, 80, 40), "beige": (220, 200, 160),
}
_SHOT_LINE = re.compile(r"^\s*(\d{1,2})\s*[.):-]\s*(.+?)\s*$")


@dataclass(frozen=True)
class CarouselPlan:
    description: str
    shots: tuple[str, ...]
    sources: tuple[str, ...]  # "planner" | "fallback", one per shot


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    if images.get(MAIN) is None:
        raise PipelineInputError(MAIN, "is required")


def _colour_name(rgb: tuple[int, int, int]) -> str:
    return min(COLOUR_NAMES, key=lambda name: sum((a - b) ** 2 for a, b in
                                                   zip(COLOUR_NAMES[name], rgb)))


def describe_image(store, image: Image.Image) -> str:
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
    return f"{light} photo; visible: {subject}; dominant colours: {', '.join(colours)}"


def parse_shot_lines(text: str) -> list[str]:
    """Numbered lines with at least three words of real text, in order, duplicates dropped."""
    shots: list[str] = []
    for line in text.splitlines():
        match = _SHOT_LINE.match(line)
        if not match:
            continue
        shot = match.group(2).strip(" \"'")
        words = re.findall(r"[A-Za-z]{2,}", shot)
        if len(words) >= 3 and sum(c.isalpha() or c.isspace() for c in shot) >= 0.7 * len(shot) \
                and shot not in shots:
            shots.append(shot)
    return shots


class _PlanComplete:
    """Stops generation once the plan is complete: 10 shot lines, or far more lines than a plan
    has (a model that only writes blank lines or noise stops early, not at the token budget),
    or as soon as the job is cancelled."""

    def __init__(self, tokenizer, prompt_length: int, is_cancelled=lambda: False):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.is_cancelled = is_cancelled

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        if self.is_cancelled():
            return True
        text = self.tokenizer.decode(input_ids[0][self.prompt_length:], skip_special_tokens=True)
        if text.count("\n") >= 2 * CAROUSEL_FRAMES + 2:
            return True
        return text.endswith("\n") and len(parse_shot_lines(text)) >= CAROUSEL_FRAMES


@torch.inference_mode()
def run_planner(store, description: str, text_prompt: str, ctx: RunContext | None = None) -> str:
    planner = store.planner()
    instruction = prompts.CAROUSEL_PLANNER_INSTRUCTION.format(
        description=description, request=text_prompt.strip() or "a varied carousel of the photo")
    tokenizer, model = planner.tokenizer, planner.model
    if getattr(tokenizer, "chat_template", None):
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer(instruction, return_tensors="pt")
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
    return tokenizer.decode(output[0][prompt_length:], skip_special_tokens=True)


def plan_carousel(store, image: Image.Image, text_prompt: str,
                  ctx: RunContext | None = None) -> CarouselPlan:
    description = describe_image(store, image)
    planned = parse_shot_lines(run_planner(store, description, text_prompt, ctx))
    planned = planned[:CAROUSEL_FRAMES]
    fallback = [s for s in prompts.CAROUSEL_FALLBACK_SHOTS if s not in planned]
    shots = planned + fallback[:CAROUSEL_FRAMES - len(planned)]
    sources = ["planner"] * len(planned) + ["fallback"] * (CAROUSEL_FRAMES - len(planned))
    return CarouselPlan(description, tuple(shots), tuple(sources))


def carousel(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    source = images[MAIN].convert("RGB")
    plan = plan_carousel(store, source, request.input.text_prompt, ctx)
    ctx.report(0.1)
    pipe = store.img2img()
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=source.size)
    work = pipe_working_size(store, pipe, size)
    init = fit_to_size(source, work)
    steps = steps_for_strength(store.quality_steps[request.options.quality], FRAME_STRENGTH)
    frames = []
    span = 0.9 / CAROUSEL_FRAMES
    for i, (shot, origin) in enumerate(zip(plan.shots, plan.sources)):
        frame = run_diffusion(
            pipe, ctx.stage(0.1 + i * span, 0.1 + (i + 1) * span), ctx, seed_offset=i,
            prompt=prompts.carousel_frame_prompt(shot, request.input.text_prompt),
            negative_prompt=prompts.NEGATIVE_PROMPT, image=init, strength=FRAME_STRENGTH,
            num_inference_steps=steps)
        frame = resize_to(frame, size)
        frame.info.update({"shot_prompt": shot, "shot_source": origin, "frame": i + 1})
        frames.append(frame)
    return frames
