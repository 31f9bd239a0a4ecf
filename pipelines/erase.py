"""erase_edit: inpaint the masked area of the main image; every other pixel stays bit-identical.

Mask convention: the mask image's luminance ≥ 128 marks the area to replace (white = replace).
Transparent pixels count as white (uploads are flattened onto white, and an RGBA mask passed
directly is read the same way), which matches the "transparent = edit here" convention. The mask
is fitted to the output with nearest-neighbour resampling, so it stays binary.

Flow: fit image + mask to the output size (the source size for `original`) → inpaint at the
working size (see `sizes`) → Lanczos back to the output size → paste-back: outside the mask the
output is the fitted source, byte for byte. An empty `text_prompt` erases (clean background
prompt), a non-empty one fills the mask with what it describes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import prompts
from .common import RunContext, pipe_working_size, run_diffusion, steps_for_strength
from .errors import PipelineInputError
from .sizes import fit_mask_to_size, fit_to_size, output_size, resize_mask_to, resize_to

MAIN, MASK = "input.main_image", "input.mask_image"
INPAINT_STRENGTH = 0.99


def mask_from_image(mask_image: Image.Image) -> np.ndarray:
    """Binary mask (True = replace) from luminance; transparent pixels count as white."""
    if "A" in mask_image.getbands():
        rgba = mask_image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        mask_image = Image.alpha_composite(canvas, rgba)
    return np.asarray(mask_image.convert("L")) >= 128


def mask_to_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def check_inputs(images: dict[str, Image.Image]) -> None:
    if MAIN not in images:
        raise PipelineInputError(MAIN, "is required")
    if images.get(MASK) is None:
        raise PipelineInputError(MASK, "is required for mode erase_edit")
    if not mask_from_image(images[MASK]).any():
        raise PipelineInputError(MASK,
                                 "the mask is empty: paint the area to erase or fill in white")


def paste_back(source: Image.Image, generated: Image.Image, mask: np.ndarray) -> Image.Image:
    """Generated pixels inside `mask`, the source's exact pixels everywhere else."""
    src = np.asarray(source.convert("RGB"))
    gen = np.asarray(generated.convert("RGB"))
    if src.shape != gen.shape or mask.shape != src.shape[:2]:
        raise ValueError("source, generated image and mask must have the same size")
    return Image.fromarray(np.where(mask[..., None], gen, src), "RGB")


def inpaint_region(store, ctx: RunContext, base: Image.Image, mask: np.ndarray, prompt: str,
                   negative_prompt: str, steps: int, *, progress=None,
                   strength: float = INPAINT_STRENGTH, seed_offset: int = 0, pipe=None,
                   alpha: np.ndarray | None = None, **pipeline_kwargs) -> Image.Image:
    """Inpaint `mask` of `base` at the working size and paste back at `base`'s size.

    `pipe` defaults to the store's inpaint pipeline (a ControlNet inpaint one takes its
    `control_image` through `pipeline_kwargs`, at `pipe_working_size`). With `alpha` (float,
    `base`-sized, 0 outside `mask`) the result is blended through it (`scene.soft_paste`), else
    pasted back hard. `pipeline_kwargs` go to the pipeline call as they are (e.g.
    `ip_adapter_image`).
    """
    pipe = pipe or store.inpaint()
    work = pipe_working_size(store, pipe, base.size)
    work_mask = resize_mask_to(mask_to_image(mask), work)
    generated = run_diffusion(
        pipe, progress or ctx.stage(0.0, 1.0), ctx, seed_offset=seed_offset, prompt=prompt,
        negative_prompt=negative_prompt, image=resize_to(base, work), mask_image=work_mask,
        width=work[0], height=work[1], num_inference_steps=steps_for_strength(steps, strength),
        strength=strength, **pipeline_kwargs)
    if alpha is not None:
        from .scene import soft_paste

        return soft_paste(base, resize_to(generated, base.size), alpha)
    return paste_back(base, resize_to(generated, base.size), mask)


def erase_edit(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(images)
    ctx.report(0.0)
    source = images[MAIN]
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=source.size)
    base = fit_to_size(source.convert("RGB"), size)
    mask = mask_from_image(fit_mask_to_size(images[MASK], size))
    if not mask.any():
        raise PipelineInputError(MASK, "the mask is empty inside the output frame")
    prompt, negative = prompts.erase_prompt(request.input.text_prompt)
    steps = store.quality_steps[request.options.quality]
    result = inpaint_region(store, ctx, base, mask, prompt, negative, steps)
    ctx.report(1.0)
    return [result]
