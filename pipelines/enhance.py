"""AIXpose enhancements: preset actions and/or a custom prompt, composed into ONE diffusion pass.

`EnhanceRequest` is the job body (`tool: "enhance"`): `input.image` is the picture being enhanced,
`input.reference` the optional consistency reference, `options` carry the action ids, the optional
custom prompt, aspect ratio, resolution (1K/2K/4K: the output's long side), variants (1–4;
variant i uses seed + i) and the output format.

Flow: fit the source to the output size → `compose_actions` merges the recipes (joined prompts,
united regions, strongest strength) → either
- a whole-frame pass (some action works on the `frame`, or only a custom prompt): depth ControlNet
  img2img, so the room's geometry stays put while style and light change; or
- a region pass: the scene segmenter (ADE20K) labels the picture once; the union of the actions'
  regions (`scene.REGION_CLASSES`) is grown and feathered into an alpha, the area under it is
  inpainted (under the depth ControlNet for `keep_layout` recipes such as interior styles) and
  blended back through the alpha, so every pixel outside the feather stays bit-exact. A region
  the segmenter does not find (under `scene.MIN_REGION_FRACTION` of the frame) falls back to a
  fixed band of the frame (`FALLBACK_BANDS`), so a job never silently returns its input.
Masks and the depth condition are computed once and shared by all variants; masks come from the
working size, their alpha is resized to the output size.

Consistency goal: with `input.reference` (an approved picture of the same project) every
diffusion pass runs under the IP-Adapter with that picture as style reference
(`edit.reference_conditioning`, scale `CONSISTENCY_SCALE`), so a listing's rooms share one look.
The seed family is decided at the edge: the job's seed is the reference picture's seed, and
variant i uses seed + i as always. Without a reference no adapter is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import prompts
from .actions import (CUSTOM_PROMPT_STRENGTH, PHOTO_STYLE, ActionRecipe, check_instruction,
                      enhancement_size)
from . import scene
from .common import RunContext, depth_control_image, pipe_working_size, run_diffusion, \
    steps_for_strength
from .edit import reference_conditioning
from .erase import inpaint_region
from .errors import PipelineInputError
from .sizes import fit_to_size, resize_to, working_size

IMAGE = "input.image"
REFERENCE = "input.reference"
CONSISTENCY_SCALE = 0.6
MAX_VARIANTS = 4
CONTROL_SCALE = 0.8
# Where a region is assumed to be when the segmenter finds none of it: (left, top, right,
# bottom) fractions of the frame.
FALLBACK_BANDS = {
    "walls": (0.0, 0.1, 1.0, 0.7), "floor": (0.0, 0.6, 1.0, 1.0), "ceiling": (0.0, 0.0, 1.0, 0.12),
    "sky": (0.0, 0.0, 1.0, 0.35), "ground": (0.0, 0.7, 1.0, 1.0), "people": (0.3, 0.3, 0.7, 0.95),
    "furnishings": (0.1, 0.45, 0.9, 1.0), "surfaces": (0.0, 0.55, 1.0, 1.0),
    "windows": (0.3, 0.2, 0.7, 0.6), "interior": (0.0, 0.0, 1.0, 1.0),
}


# ---- composition ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComposedRecipe:
    """Several actions as one pass."""

    prompt: str
    negative_prompt: str
    strength: float
    whole_frame: bool
    regions: tuple[str, ...]  # used when not whole_frame
    keep_layout: bool = False  # region pass under the depth ControlNet


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
                          whole_frame=whole_frame, regions=() if whole_frame else regions,
                          keep_layout=any(r.keep_layout for r in recipes))


# ---- masks ------------------------------------------------------------------------------------
def fallback_mask(shape: tuple[int, int], region: str) -> np.ndarray:
    height, width = shape
    left, top, right, bottom = FALLBACK_BANDS[region]
    mask = np.zeros((height, width), dtype=bool)
    mask[round(top * height):max(round(bottom * height), round(top * height) + 1),
         round(left * width):max(round(right * width), round(left * width) + 1)] = True
    return mask


def regions_mask(segmentation, regions) -> np.ndarray:
    """Union of `regions` in the label map; each region the segmenter does not find falls back
    to its band."""
    mask = np.zeros(segmentation.labels.shape, dtype=bool)
    for region in regions:
        found = scene.region_mask(segmentation, region)
        if found.mean() < scene.MIN_REGION_FRACTION:
            found = fallback_mask(found.shape, region)
        mask |= found
    return mask


def enhancement_alpha(store, base: Image.Image, regions) -> np.ndarray:
    """The feathered alpha (float32, `base`'s size) a region pass edits under."""
    work = working_size(base.size, native_size=max(store.native_size, 64), multiple=8)
    segmentation = store.scene_segmenter()(resize_to(base, work))
    return scene.resize_alpha(scene.feathered_alpha(regions_mask(segmentation, regions)),
                              base.size)


# ---- the pipeline -----------------------------------------------------------------------------
def check_inputs(request, images: dict[str, Image.Image]) -> list[ActionRecipe]:
    if images.get(IMAGE) is None:
        raise PipelineInputError(IMAGE, "is required")
    return check_instruction(request.options.actions, request.options.prompt, "options")


def consistency_references(images: dict[str, Image.Image]) -> list[Image.Image]:
    """The style reference of a consistency goal, if the job has one."""
    reference = images.get(REFERENCE)
    return [reference.convert("RGB")] if reference is not None else []


def enhance(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    recipes = check_inputs(request, images)
    options = request.options
    ctx.report(0.0)
    source = images[IMAGE].convert("RGB")
    references = consistency_references(images)
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
        with reference_conditioning(store, pipe, references, CONSISTENCY_SCALE) as reference:
            for variant in range(options.variants):
                progress = ctx.stage(0.1 + 0.9 * variant / options.variants,
                                     0.1 + 0.9 * (variant + 1) / options.variants)
                result = run_diffusion(
                    pipe, progress, ctx, seed_offset=variant, prompt=composed.prompt,
                    negative_prompt=composed.negative_prompt, image=init, control_image=control,
                    strength=composed.strength, controlnet_conditioning_scale=CONTROL_SCALE,
                    num_inference_steps=steps_for_strength(steps, composed.strength),
                    **reference)
                outputs.append(resize_to(result, size))
        return outputs

    base = fit_to_size(source, size)
    alpha = enhancement_alpha(store, base, composed.regions)
    mask = alpha > 0
    pipe, layout = store.inpaint(), {}
    if composed.keep_layout:
        pipe = store.controlnet_inpaint("depth")
        work = pipe_working_size(store, pipe, size)
        layout = {"control_image": depth_control_image(
                      store.depth_estimator()(resize_to(base, work))),
                  "controlnet_conditioning_scale": CONTROL_SCALE}
    ctx.report(0.1)
    outputs = []
    with reference_conditioning(store, pipe, references, CONSISTENCY_SCALE) as reference:
        for variant in range(options.variants):
            progress = ctx.stage(0.1 + 0.9 * variant / options.variants,
                                 0.1 + 0.9 * (variant + 1) / options.variants)
            outputs.append(inpaint_region(store, ctx, base, mask, composed.prompt,
                                          composed.negative_prompt, steps, progress=progress,
                                          strength=composed.strength, seed_offset=variant,
                                          pipe=pipe, alpha=alpha, **layout, **reference))
    return outputs
