"""editor: multi-reference image-to-image. `input.images[0]` is the image being edited.

The first image is fitted (centre crop + Lanczos) to the output size and, at the working size,
encoded by the VAE into the img2img init latents; the denoising at `EDIT_STRENGTH` then follows
the prompt. The other images (up to 15) are references: they condition the UNet through the
IP-Adapter (`ModelStore.reference_conditioning`, scale `REFERENCE_SCALE`), not the init, so they
steer subject, style and palette without replacing the main image's layout. All references go to
the one adapter as a single list (`ip_adapter_image=[references]`): each image is CLIP-encoded and
projected to its own image tokens, and the tokens of all references are concatenated (not
averaged), so every reference keeps its own identity in the cross-attention. (This replaces the
earlier mixing of the references' VAE latents into the init.) Without references the adapter is
not loaded at all and the call is the plain img2img one. VAE encoding uses the latent mean and
CLIP encoding is deterministic, so the result is deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from PIL import Image

from . import prompts
from .common import RunContext, pipe_working_size, run_diffusion, steps_for_strength
from .errors import PipelineInputError
from .sizes import fit_to_size, output_size, resize_to

EDIT_STRENGTH = 0.6
REFERENCE_SCALE = 0.6


def image_keys(images: dict[str, Image.Image]) -> list[str]:
    keys = [key for key in images if key.startswith("input.images[")]
    return sorted(keys, key=lambda key: int(key[len("input.images["):-1]))


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    expected = [f"input.images[{i}]" for i in range(len(request.input.images))]
    for key in expected:
        if images.get(key) is None:
            raise PipelineInputError(key, "image is missing")
    if not 1 <= len(expected) <= 16:
        raise PipelineInputError("input.images", "takes 1 to 16 images")


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


def edit(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    keys = image_keys(images)
    main = images[keys[0]]
    pipe = store.img2img()
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=main.size)
    work = pipe_working_size(store, pipe, size)
    init = encode_latents(pipe, fit_to_size(main.convert("RGB"), work))
    references = [images[key].convert("RGB") for key in keys[1:]]
    ctx.report(0.1)
    steps = store.quality_steps[request.options.quality]
    kwargs = dict(prompt=prompts.editor_prompt(request.input.prompt),
                  negative_prompt=prompts.NEGATIVE_PROMPT, image=init, strength=EDIT_STRENGTH,
                  num_inference_steps=steps_for_strength(steps, EDIT_STRENGTH))
    with reference_conditioning(store, pipe, references, REFERENCE_SCALE) as reference_kwargs:
        result = run_diffusion(pipe, ctx.stage(0.1, 1.0), ctx, **kwargs, **reference_kwargs)
    return [resize_to(result, size)]


@contextlib.contextmanager
def reference_conditioning(store, pipe, references: list[Image.Image],
                           scale: float) -> Iterator[dict]:
    """The extra pipeline kwargs that feed `references` to the IP-Adapter, loaded for the block.

    No references: nothing is loaded and the kwargs are empty (the plain, adapter-free call).
    Otherwise all references go to the single adapter as one list; diffusers encodes each image
    and concatenates their image tokens. Call only `pipe` inside the block: the adapter patches
    the UNet that sibling pipelines share.
    """
    if not references:
        yield {}
        return
    with store.reference_conditioning(pipe, scale=scale):
        yield {"ip_adapter_image": [list(references)]}
