"""generator: prompt → image at the exact output size.

Runs text→image at the working size (≈ native_size² pixels, output aspect) and resizes to the
output size with Lanczos (see `sizes`). `quality` picks the number of denoising steps
(`store.quality_steps`).

`options.background`:
- `opaque` (default): always an RGB image.
- `auto`: if the prompt asks for a cut-out subject (it contains one of
  `prompts.TRANSPARENT_BACKGROUND_WORDS`, e.g. "transparent background", "isolated", "sticker")
  *and* the output format can carry alpha (png or webp), the matting model (salient-object
  U²-Net, `scene.subject_alpha`) gives the subject a soft alpha and the result is RGBA: the
  backdrop transparent, soft edges (hair, fur, glass) partly so. Otherwise the image stays opaque
  (jpeg can never be transparent). If the matte holds no subject, or nothing but subject
  (`subject_share` outside (0, 1)), there is nothing to cut and the image stays opaque.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import prompts, scene
from .common import RunContext, pipe_working_size, run_diffusion
from .errors import PipelineInputError
from .sizes import output_size, resize_to

ALPHA_FORMATS = ("png", "webp")


def check_inputs(request) -> None:
    if not request.input.prompt.strip():
        raise PipelineInputError("input.prompt", "must not be blank")


def wants_transparent_background(prompt: str, background: str, output_format: str) -> bool:
    if background != "auto" or output_format not in ALPHA_FORMATS:
        return False
    text = prompt.lower()
    return any(word in text for word in prompts.TRANSPARENT_BACKGROUND_WORDS)


def subject_share(alpha: np.ndarray) -> float:
    """The share of the frame the matte counts as subject (alpha ≥ 0.5)."""
    return float((alpha >= 0.5).mean())


def cut_out_subject(store, image: Image.Image) -> Image.Image:
    """RGBA with the matting model's soft alpha; the RGB image if there is nothing to cut."""
    alpha = scene.subject_alpha(store, image)
    if subject_share(alpha) in (0.0, 1.0):
        return image
    return scene.cut_out(image, alpha)


def generate(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request)
    options = request.options
    ctx.report(0.0)
    pipe = store.text2img()
    size = output_size(options.aspect_ratio, native_size=store.native_size)
    work = pipe_working_size(store, pipe, size)
    transparent = wants_transparent_background(request.input.prompt, options.background,
                                               options.output_format)
    image = run_diffusion(
        pipe, ctx.stage(0.0, 0.9 if transparent else 1.0), ctx,
        prompt=prompts.generator_prompt(request.input.prompt),
        negative_prompt=prompts.NEGATIVE_PROMPT, width=work[0], height=work[1],
        num_inference_steps=store.quality_steps[options.quality])
    image = resize_to(image, size)
    if transparent:
        ctx.check_cancelled()
        image = cut_out_subject(store, image)
    ctx.report(1.0)
    return [image]


def generate_batch(store, requests: list, images: list[dict], contexts: list[RunContext]
                   ) -> list[list[Image.Image] | Exception]:
    """`generate` for jobs of one working size and step count (their batch key), denoised in one
    batch; each job's outputs, or the exception that failed it alone."""
    from .batch import run_diffusion_batch

    results: list[list[Image.Image] | Exception | None] = [None] * len(requests)
    live = []
    for i, request in enumerate(requests):
        try:
            check_inputs(request)
            contexts[i].report(0.0)
            live.append(i)
        except Exception as exc:  # noqa: BLE001 - a bad job fails alone
            results[i] = exc
    if live:
        options = requests[live[0]].options
        pipe = store.text2img()
        size = output_size(options.aspect_ratio, native_size=store.native_size)
        work = pipe_working_size(store, pipe, size)
        transparent = [wants_transparent_background(requests[i].input.prompt,
                                                    requests[i].options.background,
                                                    requests[i].options.output_format)
                       for i in live]
        images_out = run_diffusion_batch(
            pipe, [contexts[i] for i in live],
            [prompts.generator_prompt(requests[i].input.prompt) for i in live],
            [prompts.NEGATIVE_PROMPT] * len(live), end=0.9 if any(transparent) else 1.0,
            width=work[0], height=work[1], num_inference_steps=store.quality_steps[options.quality])
        for i, image, cut in zip(live, images_out, transparent):
            if isinstance(image, Exception):
                results[i] = image
                continue
            image = resize_to(image, size)
            results[i] = [cut_out_subject(store, image) if cut else image]
            contexts[i].report(1.0)
    return results  # type: ignore[return-value]
