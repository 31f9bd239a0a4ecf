"""Upscaler: tiled Real-ESRGAN at 2×, 4× or "4k" (the shorter side becomes exactly 2160 px).

Models and `noise_scale` (0–0.5, "lower keeps closer to source"):

* **4×** runs realesr-general-x4v3 blended with its weak-denoise twin realesr-general-wdn-x4v3
  by deep network interpolation (DNI, as Real-ESRGAN's `--denoise_strength`): the weights are
  `s · general + (1 − s) · wdn` with denoise strength `s = noise_scale / 0.5`. 0 keeps the
  source's grain, 0.5 denoises fully; the default 0.1 gives s = 0.2.
* **2×** runs RealESRGAN_x2plus, which has no weak-denoise twin. Here `noise_scale` sets how much
  of the network's reconstruction replaces a bicubic resample of the source:
  `out = w · network + (1 − w) · bicubic` with `w = 0.5 + noise_scale` (0.5…1.0).
* **"4k"** picks the 2× path when the needed factor is at most 2, else the 4× path, then resizes
  (Lanczos) to the exact 2160p size with the aspect kept (as Real-ESRGAN's `--outscale` does:
  one network pass, then a resize). A source whose shorter side is already at least 2160 px is
  only resized.

Inference is tiled: each tile is cut with `tile_overlap` pixels of context on every side, run
through the network, and the context is cropped off before the tile is written into the output,
so any input size fits in memory and tiled output matches untiled output. Progress is reported
per tile; a cancel stops between tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from PIL import Image

from .common import RunContext
from .errors import PipelineInputError
from .vocabulary import (DEFAULT_NOISE_SCALE, NOISE_SCALE_RANGE, UPSCALE_4K_HEIGHT,
                         UPSCALE_SCALES)

DEFAULT_TILE_SIZE = 256  # input pixels per tile side
DEFAULT_TILE_OVERLAP = 16  # context pixels around each tile, cropped off after inference
MAX_OUTPUT_PIXELS = 8192 * 8192

X2_MODEL = "realesrgan_x2plus"
X4_MODEL = "realesr_general_x4v3"
X4_WEAK_DENOISE_MODEL = "realesr_general_wdn_x4v3"


@dataclass(frozen=True)
class UpscalePlan:
    """What one call does: the network factor, the network's output size, the final size."""

    model_factor: int  # 1 (resize only), 2 or 4
    model_size: tuple[int, int]
    output_size: tuple[int, int]


def plan_upscale(size: tuple[int, int], scale: int | str) -> UpscalePlan:
    """Sizes for upscaling an image of `size` (width, height) by `scale` (2, 4 or "4k")."""
    width, height = size
    if scale == "4k":
        shorter, longer = min(width, height), max(width, height)
        target_longer = max(1, round(longer * UPSCALE_4K_HEIGHT / shorter))
        output = ((UPSCALE_4K_HEIGHT, target_longer) if width <= height
                  else (target_longer, UPSCALE_4K_HEIGHT))
        needed = UPSCALE_4K_HEIGHT / shorter
        factor = 1 if needed <= 1 else 2 if needed <= 2 else 4
    else:
        factor = int(scale)
        output = (width * factor, height * factor)
    return UpscalePlan(factor, (width * factor, height * factor), output)


def check_inputs(image: Any, scale: Any, noise_scale: Any) -> UpscalePlan:
    if scale not in UPSCALE_SCALES or isinstance(scale, bool):
        raise PipelineInputError("options.scale", 'must be 2, 4 or "4k"')
    low, high = NOISE_SCALE_RANGE
    if (isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float))
            or not math.isfinite(noise_scale) or not low <= noise_scale <= high):
        raise PipelineInputError("options.noise_scale", f"must be a number from {low} to {high}")
    if not isinstance(image, Image.Image) or image.width < 1 or image.height < 1:
        raise PipelineInputError("input.image", "must be a non-empty image")
    plan = plan_upscale(image.size, scale)
    for size in (plan.model_size, plan.output_size):
        if size[0] * size[1] > MAX_OUTPUT_PIXELS:
            raise PipelineInputError(
                "input.image", f"too large to upscale by {scale}: the result would be "
                f"{size[0]}x{size[1]} pixels, more than {MAX_OUTPUT_PIXELS} in total")
    return plan


def upscale(store: Any, image: Image.Image, scale: int | str = 2,
            noise_scale: float = DEFAULT_NOISE_SCALE, ctx: RunContext | None = None, *,
            tile_size: int = DEFAULT_TILE_SIZE,
            tile_overlap: int = DEFAULT_TILE_OVERLAP) -> Image.Image:
    """Upscale `image`; the result has exactly the planned size (see module docstring)."""
    plan = check_inputs(image, scale, noise_scale)
    if tile_size < 8 or tile_overlap < 0:
        raise ValueError("tile_size must be >= 8 and tile_overlap >= 0")
    ctx = ctx or RunContext(seed=0)
    ctx.check_cancelled()
    mode = image.mode
    has_alpha = mode in ("RGBA", "LA") or (mode == "P" and "transparency" in image.info)
    rgb = image.convert("RGB")

    if plan.model_factor == 1:
        result = rgb
    else:
        if plan.model_factor == 4:
            network = denoise_network(store, noise_scale / NOISE_SCALE_RANGE[1])
            network_weight = 1.0
        else:
            network = store.upscaler(X2_MODEL)
            network_weight = 0.5 + noise_scale
        pixels = run_tiled(network, np.asarray(rgb), plan.model_factor, ctx,
                           tile_size=tile_size, tile_overlap=tile_overlap,
                           device=store.device)
        if network_weight < 1.0:  # in place: the float image can be hundreds of MB
            resampled = np.asarray(rgb.resize(plan.model_size, Image.Resampling.BICUBIC))
            pixels *= network_weight
            pixels += (1.0 - network_weight) * resampled.astype(np.float32)
        np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels)
        result = Image.fromarray(pixels.astype(np.uint8))

    if result.size != plan.output_size:
        result = result.resize(plan.output_size, Image.Resampling.LANCZOS)
    if has_alpha:
        alpha = image.convert("RGBA").getchannel("A")
        result.putalpha(alpha.resize(plan.output_size, Image.Resampling.BICUBIC))
    if mode in ("L", "LA"):
        result = result.convert(mode)
    ctx.report(1.0)
    return result


def denoise_network(store: Any, strength: float) -> torch.nn.Module:
    """general-x4v3 interpolated with its weak-denoise twin: `strength` 1 → general, 0 → wdn."""
    from retouch.models.realesrgan_arch import interpolate_state_dicts

    strength = min(1.0, max(0.0, float(strength)))
    if strength == 1.0:
        return store.upscaler(X4_MODEL)
    if strength == 0.0:
        return store.upscaler(X4_WEAK_DENOISE_MODEL)
    weights = interpolate_state_dicts(store.upscaler_weights(X4_MODEL),
                                      store.upscaler_weights(X4_WEAK_DENOISE_MODEL), strength)
    return store.build_upscaler(X4_MODEL, weights)


def tile_boxes(width: int, height: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) tiles covering the image, row by row."""
    return [(left, top, min(left + tile_size, width), min(top + tile_size, height))
            for top in range(0, height, tile_size) for left in range(0, width, tile_size)]


@torch.inference_mode()
def run_tiled(network: torch.nn.Module, pixels: np.ndarray, factor: int, ctx: RunContext, *,
              tile_size: int, tile_overlap: int, device: torch.device | str = "cpu"
              ) -> np.ndarray:
    """Run `network` (×`factor`) over uint8 H×W×3 `pixels` tile by tile → float32 H'×W'×3 in
    0…255. Odd sizes are edge-padded to even first (the ×2 net pixel-unshuffles its input)."""
    height, width = pixels.shape[:2]
    dtype = next(network.parameters()).dtype
    source = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    pad_w, pad_h = width % 2, height % 2
    if pad_w or pad_h:
        source = F.pad(source, (0, pad_w, 0, pad_h), mode="replicate")
    padded_h, padded_w = source.shape[2:]
    # Even tile sizes and overlaps keep every tile origin even for the ×2 network.
    tile_size += tile_size % 2
    tile_overlap += tile_overlap % 2
    output = np.empty((padded_h * factor, padded_w * factor, 3), dtype=np.float32)
    boxes = tile_boxes(padded_w, padded_h, tile_size)
    for index, (left, top, right, bottom) in enumerate(boxes):
        ctx.check_cancelled()
        ctx_left, ctx_top = max(0, left - tile_overlap), max(0, top - tile_overlap)
        ctx_right = min(padded_w, right + tile_overlap)
        ctx_bottom = min(padded_h, bottom + tile_overlap)
        tile = source[:, :, ctx_top:ctx_bottom, ctx_left:ctx_right].to(device, dtype)
        upscaled = network(tile).float().clamp_(0, 1)
        crop = upscaled[0, :, (top - ctx_top) * factor:(bottom - ctx_top) * factor,
                        (left - ctx_left) * factor:(right - ctx_left) * factor]
        output[top * factor:bottom * factor, left * factor:right * factor] = (
            crop.permute(1, 2, 0).cpu().numpy() * 255)
        ctx.report((index + 1) / len(boxes) * 0.95)
    return output[:height * factor, :width * factor]
