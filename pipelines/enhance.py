"""AIXpose enhancements: preset actions and/or a custom prompt, composed into ONE diffusion pass.

X
enhanced, `options` carry the action ids, the optional custom prompt, aspect ratio, resolution (1K/2K/4K:
the output's long side), variants (1–4; variant i uses seed + i) and the output format.

Flow: fit the source to the output size → `compose_actions` merges the recipes (joined prompts,
united regions, strongest strength) → either
- a whole-frame pass (some action works on the `frame`, or only a custom prompt): depth ControlNet
  img2img, so the room's geometry stays put while style and light change; or
- a region pass: the union of the actions' masks (depth bands, sky, people from the segmenter) is
  inpainted and every pixel outside it is pasted back bit-exact (`erase.inpaint_region`).
Masks and the depth condition are computed once and shared by all variants; masks come from the
working size, and band edges are cut exactly at the output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import prompts
from .actions import (CUSTOM_PROMPT_STRENGTH, PHOTO_STYLE, ActionRecipe, check_instruction,
                      enhancement_size)
from .common import RunContext, depth_control_image, pipe_working_size, run_diffusion, \
    steps_for_strength
from .erase import inpaint_region
from .errors import PipelineInputError
from .placement import box_mask, segment_labels
from .sizes import fit_to_size, resize_mask_to, resize_to, working_size

IMAGE = "input.image"
MAX_VARIANTS = 4
CONTROL_SCALE = 0.8
MIN_REGION_FRACTION = 0.03  # a depth-narrowed region smaller than this falls back to its band
# Bands as (top, bottom) fractions of the height; people fall back to a centre box.
BANDS = {"floor": (0.45, 1.0), "walls": (0.1, 0.7), "ground": (0.6, 1.0), "room": (0.1, 1.0),
         "sky": (0.0, 0.45)}
PEOPLE_FALLBACK_BOX = (0.3, 0.3, 0.7, 0.95)


# ---- composition ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComposedRecipe:
    """Several actions as one pass."""

    prompt: str
    negative_prompt: str
    strength: float
    whole_frame: bool
    regions: tuple[str, ...]  # used when not whole_frame


def compose_actions(recipes: list[ActionRecipe], custom_prompt: str | None) -> ComposedRecipe:
    parts = [r.prompt for r in recipes]
    prompt = prompts.with_instruction(", ".join(parts + [PHOTO_STYLE]), custom_prompt)
    negative = ", ".join([r.negative for r in recipes if r.negative] + [prompts.NEGATIVE_PROMPT])
    strengths = [r.strength for r in recipes]
    has_prompt = bool((custom_prompt or "").strip())
    if has_prompt:
        strengths.append(CUSTOM_PROMPT_STRENGTH)
    regions = tuple(dict.fromkeys(r.region for r in recipes if r.region != "frame"))
    whole_frame = any(r.region == "frame" for r in recipes) or not regions
    return ComposedRecipe(prompt=prompt, negative_prompt=negative, strength=max(strengths),
                          whole_frame=whole_frame, regions=() if whole_frame else regions)


# ---- masks ------------------------------------------------------------------------------------
def band_mask(size: tuple[int, int], band: tuple[float, float]) -> np.ndarray:
    return box_mask(size, (0.0, band[0], 1.0, band[1]))


def region_mask(store, region: str, image: Image.Image, inverse_depth: np.ndarray) -> np.ndarray:
    """Boolean mask of `region` at `image`'s size (`inverse_depth` has the same size)."""
    if region == "people":
        mask = segment_labels(store, image, "Background", exclude=True)
        return mask if mask.mean() >= MIN_REGION_FRACTION / 3 else box_mask(image.size,
                                                                            PEOPLE_FALLBACK_BOX)
    band = band_mask(image.size, BANDS[region])
    if region in ("walls", "room"):
        return band
    if region == "sky":
        luminance = np.asarray(image.convert("L"), dtype=np.float32)
        far = inverse_depth <= np.percentile(inverse_depth, 35)
        bright = luminance >= 0.75 * float(luminance.max())
        mask = band & (far | bright)
    else:  # floor, ground: the near part of the lower band
        mask = band & (inverse_depth >= np.percentile(inverse_depth[band], 40))
    return mask if mask.mean() >= MIN_REGION_FRACTION else band


# ---- the pipeline -----------------------------------------------------------------------------
def check_inputs(request, images: dict[str, Image.Image]) -> list[ActionRecipe]:
    if images.get(IMAGE) is None:
        raise PipelineInputError(IMAGE, "is required")
    return check_instruction(request.options.actions, request.options.prompt, "options")


def enhance(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    recipes = check_inputs(request, images)
    options = request.options
    ctx.report(0.0)
    source = images[IMAGE].convert("RGB")
    size = enhancement_size(options.aspect_ratio, options.resolution, source.size)
    composed = compose_actions(recipes, options.prompt)
    steps = store.quality_steps[options.quality]
    if composed.whole_frame:
        pipe = store.controlnet_img2img("depth")
        work = pipe_working_size(store, pipe, size)
        init = fit_to_size(source, work)
        control = depth_control_image(store.depth_estimator()(init))
        ctx.report(0.1)
        outputs = []
        for variant in range(options.variants):
            progress = ctx.stage(0.1 + 0.9 * variant / options.variants,
                                 0.1 + 0.9 * (variant + 1) / options.variants)
            result = run_diffusion(
                pipe, progress, ctx, seed_offset=variant, prompt=composed.prompt,
                negative_prompt=composed.negative_prompt, image=init, control_image=control,
                strength=composed.strength, controlnet_conditioning_scale=CONTROL_SCALE,
                num_inference_steps=steps_for_strength(steps, composed.strength))
            outputs.append(resize_to(result, size))
        return outputs

    base = fit_to_size(source, size)
    work = working_size(size, native_size=max(store.native_size, 64), multiple=8)
    small = resize_to(base, work)
    inverse_depth = store.depth_estimator()(small)
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for region in composed.regions:
        small_mask = region_mask(store, region, small, inverse_depth)
        region_image = Image.fromarray(np.where(small_mask, 255, 0).astype(np.uint8), "L")
        full = np.asarray(resize_mask_to(region_image, size)) >= 128
        if region in BANDS:  # band edges exact at the output size, not rounded at the work size
            full &= band_mask(size, BANDS[region])
        mask |= full
    ctx.report(0.1)
    outputs = []
    for variant in range(options.variants):
        progress = ctx.stage(0.1 + 0.9 * variant / options.variants,
                             0.1 + 0.9 * (variant + 1) / options.variants)
        outputs.append(inpaint_region(store, ctx, base, mask, composed.prompt,
                                      composed.negative_prompt, steps, progress=progress,
                                      strength=composed.strength, seed_offset=variant))
    return outputs
