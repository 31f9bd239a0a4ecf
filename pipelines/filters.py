"""ai_filter: fixed server-side recipes (`prompts.FILTER_RECIPES`) — img2img, then a grade.

The output keeps the input's size (scaled down past `sizes.MAX_ORIGINAL_SIDE`). Diffusion runs at
the working size with the recipe's prompt, negative prompt and strength; the result is resized
back and finished by `apply_grade`, a deterministic colour grade: per-channel gain, gamma,
contrast, saturation, faded blacks, vignette, grayscale (noir-bw ends exactly grayscale) and, for
polaroid, the instant-film frame (white border, wider at the bottom, same outer size).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .common import RunContext, pipe_working_size, run_diffusion, steps_for_strength
from .errors import PipelineInputError
from .prompts import FILTER_RECIPES, FilterRecipe
from .sizes import output_size, resize_to

IMAGE = "input.image"
FRAME_COLOUR = (246, 244, 238)


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    if images.get(IMAGE) is None:
        raise PipelineInputError(IMAGE, "is required")
    if request.input.filter not in FILTER_RECIPES:
        raise PipelineInputError("input.filter", f"unknown filter {request.input.filter!r}")


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def apply_grade(image: Image.Image, recipe: FilterRecipe) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    rgb = rgb * np.array(recipe.gain)
    rgb = np.clip(rgb, 0.0, 1.0) ** recipe.gamma
    rgb = (rgb - 0.5) * recipe.contrast + 0.5
    grey = _luma(rgb)[..., None]
    rgb = grey + (rgb - grey) * recipe.saturation
    if recipe.grayscale:
        rgb = np.repeat(_luma(rgb)[..., None], 3, axis=-1)
    rgb = recipe.fade + (1.0 - recipe.fade) * np.clip(rgb, 0.0, 1.0)
    if recipe.vignette:
        h, w = rgb.shape[:2]
        y, x = np.mgrid[0:h, 0:w]
        r = np.hypot((x - (w - 1) / 2) / (w / 2), (y - (h - 1) / 2) / (h / 2)) / np.sqrt(2)
        rgb = rgb * (1.0 - recipe.vignette * r[..., None] ** 2)
    graded = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")
    return polaroid_frame(graded) if recipe.polaroid_frame else graded


def polaroid_frame(image: Image.Image) -> Image.Image:
    """The photo inside an instant-film frame of the same outer size (bottom border ×3.5)."""
    w, h = image.size
    side = max(1, round(0.05 * min(w, h)))
    bottom = max(side + 1, round(3.5 * side))
    inner = (max(1, w - 2 * side), max(1, h - side - bottom))
    framed = Image.new("RGB", (w, h), FRAME_COLOUR)
    framed.paste(resize_to(image, inner), (side, side))
    return framed


def ai_filter(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    recipe = FILTER_RECIPES[request.input.filter]
    source = images[IMAGE].convert("RGB")
    pipe = store.img2img()
    size = output_size("original", native_size=store.native_size, source_size=source.size)
    work = pipe_working_size(store, pipe, size)
    steps = store.quality_steps[request.options.quality]
    result = run_diffusion(
        pipe, ctx.stage(0.0, 0.95), ctx, prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt, image=resize_to(source, work),
        strength=recipe.strength, num_inference_steps=steps_for_strength(steps, recipe.strength))
    graded = apply_grade(resize_to(result, size), recipe)
    ctx.report(1.0)
    return [graded]
