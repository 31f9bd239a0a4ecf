"""editor: multi-reference image-to-image. `input.images[0]` is the image being edited.

The first image is fitted (centre crop + Lanczos) to the output size and, at the working size,
encoded by the VAE into the img2img init latents. The other images (up to 15) condition the
result through those latents: each is fitted to the same frame and VAE-encoded, and their mean is
blended into the init latents with a total weight of `REFERENCE_LATENT_WEIGHT` (0.2; the first
image keeps 0.8). Latents carry colour, tone and coarse layout, so references steer palette and
mood without replacing the main image's content; the denoising at `EDIT_STRENGTH` then follows
the prompt. (The store offers no IP-Adapter yet; when it does, references belong there.)
VAE encoding uses the latent mean, so the result is deterministic for a given seed.
"""

from __future__ import annotations

import torch
from PIL import Image

from . import prompts
from .common import RunContext, run_diffusion, size_multiple, steps_for_strength
from .errors import InvalidInput
from .sizes import fit_to_size, output_size, resize_to, working_size

EDIT_STRENGTH = 0.6
REFERENCE_LATENT_WEIGHT = 0.2


def image_keys(images: dict[str, Image.Image]) -> list[str]:
    keys = [key for key in images if key.startswith("input.images[")]
    return sorted(keys, key=lambda key: int(key[len("input.images["):-1]))


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    expected = [f"input.images[{i}]" for i in range(len(request.input.images))]
    for key in expected:
        if images.get(key) is None:
            raise InvalidInput(key, "image is missing")
    if not 1 <= len(expected) <= 16:
        raise InvalidInput("input.images", "takes 1 to 16 images")


@torch.inference_mode()
def encode_latents(pipe, image: Image.Image) -> torch.Tensor:
    """Scaled VAE latents (mean of the posterior) of an RGB image already at the working size."""
    vae = pipe.vae
    dtype = vae.dtype
    # SDXL's VAE overflows in float16 (`force_upcast`): encode in float32 like diffusers does.
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        pixels = pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    finally:
        if upcast:
            vae.to(dtype=dtype)
    return latents.to(dtype)


def blended_init_latents(pipe, main: Image.Image, references: list[Image.Image],
                         weight: float = REFERENCE_LATENT_WEIGHT) -> torch.Tensor:
    latents = encode_latents(pipe, main)
    if references:
        reference = torch.stack([encode_latents(pipe, ref) for ref in references]).mean(dim=0)
        latents = (1.0 - weight) * latents + weight * reference
    return latents


def edit(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    keys = image_keys(images)
    main = images[keys[0]]
    pipe = store.img2img()
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=main.size)
    work = working_size(size, native_size=store.native_size,
                        multiple=size_multiple(pipe, store.native_size))
    frame = [fit_to_size(images[key].convert("RGB"), work) for key in keys]
    init = blended_init_latents(pipe, frame[0], frame[1:])
    ctx.report(0.1)
    steps = store.quality_steps[request.options.quality]
    result = run_diffusion(
        pipe, ctx.stage(0.1, 1.0), ctx, prompt=prompts.editor_prompt(request.input.prompt),
        negative_prompt=prompts.NEGATIVE_PROMPT, image=init, strength=EDIT_STRENGTH,
        num_inference_steps=steps_for_strength(steps, EDIT_STRENGTH))
    return [resize_to(result, size)]
