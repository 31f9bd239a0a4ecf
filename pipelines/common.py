"""What every pipeline receives besides its inputs: the seed, a progress sink and a cancel flag.

`RunContext` is built by the caller (the engine's host: a Ray deployment, the batch runner, a
test). Pipelines report progress in [0, 1] through `ctx.progress`, call `ctx.check_cancelled()`
between stages, and pass `ctx.step_callback(start, end, total_steps)` to diffusers as
`callback_on_step_end` so that denoising steps move the bar and a cancel stops the loop. Each
denoising step is also reported as `(step, steps)` of the current diffusers call to `on_step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image

from retouch.models.accel import prepare_vae_for_size

from .errors import Cancelled
from .sizes import working_size
# Long-prompt helpers live in text_embeddings; re-exported for this module's callers.
from .text_embeddings import CHUNK_TOKENS, encode_long_prompt, prompt_chunks  # noqa: F401


def _ignore_progress(_: float) -> None:
    return None


def _never_cancelled() -> bool:
    return False


def _ignore_step(_step: int, _steps: int) -> None:
    return None


@dataclass
class RunContext:
    seed: int
    progress: Callable[[float], None] = field(default=_ignore_progress)
    is_cancelled: Callable[[], bool] = field(default=_never_cancelled)
    on_step: Callable[[int, int], None] = field(default=_ignore_step)
    # Highest value reported so far; progress only moves forward.
    _reported: float = field(default=0.0, init=False, repr=False)

    def report(self, fraction: float) -> None:
        """Report overall progress; values are clamped to [0, 1] and never go backwards."""
        fraction = min(1.0, max(0.0, float(fraction)))
        if fraction < self._reported:
            return
        self._reported = fraction
        self.progress(fraction)

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled("the job was cancelled")

    def generator(self, offset: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
        """A fresh `torch.Generator` seeded from `seed + offset` (offset: frame or stage index)."""
        return torch.Generator(device=device).manual_seed((self.seed + offset) % 2**63)

    def step_callback(self, start: float, end: float, total_steps: int) -> Callable[..., Any]:
        """A diffusers `callback_on_step_end` mapping step i/total into [start, end].

        On cancel it raises `Cancelled` from inside the denoising loop, so no further step runs.
        """
        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            self.check_cancelled()
            # img2img/inpaint run fewer steps than requested (strength); the pipe knows how many.
            total = max(1, int(getattr(pipe, "num_timesteps", None) or total_steps))
            self.on_step(min(step + 1, total), total)
            self.report(start + (end - start) * min(1.0, (step + 1) / total))
            return callback_kwargs

        return on_step_end

    def stage(self, start: float, end: float) -> "StageProgress":
        """A sub-range of the bar for one stage of a multi-stage pipeline."""
        return StageProgress(self, start, end)


@dataclass
class StageProgress:
    ctx: RunContext
    start: float
    end: float

    def report(self, fraction: float) -> None:
        self.ctx.report(self.start + (self.end - self.start) * min(1.0, max(0.0, fraction)))

    def stage(self, start: float, end: float) -> "StageProgress":
        """A sub-range [start, end] of this stage (fractions of this stage)."""
        span = self.end - self.start
        return StageProgress(self.ctx, self.start + span * start, self.start + span * end)

    def step_callback(self, total_steps: int) -> Callable[..., Any]:
        return self.ctx.step_callback(self.start, self.end, total_steps)


def size_multiple(pipe: Any, native_size: int) -> int:
    """Side step for working sizes: VAE factor × UNet down-sampling (≥64 for SDXL-sized models)."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    unet = getattr(pipe, "unet", None)
    blocks = len(unet.config.block_out_channels) if unet is not None else 4
    multiple = vae_factor * 2 ** (blocks - 1)
    return max(multiple, 64) if native_size >= 512 else multiple


def pipe_working_size(store: Any, pipe: Any, size: tuple[int, int]) -> tuple[int, int]:
    """`pipe`'s working size for an output of `size`: the store's native area, `size`'s aspect,
    sides in `size_multiple` steps."""
    return working_size(size, native_size=store.native_size,
                        multiple=size_multiple(pipe, store.native_size))


def steps_for_strength(denoising_steps: int, strength: float) -> int:
    """`num_inference_steps` such that img2img/inpaint at `strength` runs `denoising_steps` steps.

    diffusers runs int(num_inference_steps * strength) steps; quality means steps actually run.
    """
    return max(denoising_steps, math.ceil(denoising_steps / max(strength, 1e-3)))


def run_diffusion(pipe: Any, progress: "StageProgress", ctx: RunContext, *, seed_offset: int = 0,
                  **kwargs: Any) -> Image.Image:
    """Call a diffusers pipeline once with our generator and step callback; return one image."""
    ctx.check_cancelled()
    steps = int(kwargs.get("num_inference_steps", 1))
    if "prompt" in kwargs:
        embeddings = encode_long_prompt(pipe, kwargs["prompt"], kwargs.get("negative_prompt") or "")
        if embeddings is not None:
            kwargs.pop("prompt")
            kwargs.pop("negative_prompt", None)
            kwargs.update(embeddings)
    size = _image_size(kwargs)
    if size is not None:
        prepare_vae_for_size(pipe, *size)  # tiles a CUDA pipeline's VAE for 4k and larger
    result = pipe(generator=ctx.generator(seed_offset), output_type="pil",
                  callback_on_step_end=progress.step_callback(steps), **kwargs)
    ctx.check_cancelled()
    progress.report(1.0)
    return result.images[0].convert("RGB")


def _image_size(kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """The size a pipeline call decodes: its width/height, else its init image's size."""
    if kwargs.get("width") and kwargs.get("height"):
        return int(kwargs["width"]), int(kwargs["height"])
    image = kwargs.get("image")
    return image.size if isinstance(image, Image.Image) else None


def depth_control_image(inverse_depth: Any) -> Image.Image:
    """A depth ControlNet condition: inverse depth (larger = nearer) normalised to 0..255 grey."""
    import numpy as np

    values = np.asarray(inverse_depth, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    grey = np.rint(scaled * 255.0).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
