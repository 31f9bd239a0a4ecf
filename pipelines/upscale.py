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
so any input size fits in memory and tiled output matches untiled output. Tiles whose context
windows have the same shape go through the network together, `tile_batch` per forward pass.
Progress is reported per pass; a cancel stops between passes.

Device defaults (`models.accel.AccelSettings`): on CPU float32, 256 px tiles, one tile per pass;
on CUDA the settings' half dtype (float16), `upscaler_tile` px tiles, `upscaler_batch` tiles per
pass, channels_last, and rounding to 8-bit on the GPU so only the final image is copied back.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from PIL import Image

from retouch.models.accel import AccelSettings, upscaler_dtype

from .common import RunContext
from .errors import PipelineInputError
from .vocabulary import (DEFAULT_NOISE_SCALE, NOISE_SCALE_RANGE, UPSCALE_4K_HEIGHT,
                         UPSCALE_SCALES)

DEFAULT_TILE_SIZE = 256  # input pixels per tile side (CPU; CUDA: AccelSettings.upscaler_tile)
DEFAULT_TILE_OVERLAP = 16  # context pixels around each tile, cropped off after inference
DNI_CACHE_SIZE = 4  # interpolated x4 networks kept per store (one per recent noise_scale)
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
    return check_upscale_output(image.width, image.height, scale)


def check_upscale_output(width: int, height: int, scale: int | str) -> UpscalePlan:
    """The plan for a `width`x`height` source, or `PipelineInputError("input.image")` when the
    network's output or the final image would pass `MAX_OUTPUT_PIXELS`. Needs only the size,
    so the API runs it when a job is created, before anything is reserved."""
    plan = plan_upscale((width, height), scale)
    for size in (plan.model_size, plan.output_size):
        if size[0] * size[1] > MAX_OUTPUT_PIXELS:
            raise PipelineInputError(
                "input.image", f"is {width}x{height}: too large to upscale by {scale}, the "
                f"result would be {size[0]}x{size[1]} pixels, more than {MAX_OUTPUT_PIXELS} "
                "in total")
    return plan


def upscale(store: Any, image: Image.Image, scale: int | str = 2,
            noise_scale: float = DEFAULT_NOISE_SCALE, ctx: RunContext | None = None, *,
            tile_size: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
            tile_batch: int | None = None) -> Image.Image:
    """Upscale `image`; the result has exactly the planned size (see module docstring).
    `tile_size` / `tile_batch` default to the store's device defaults."""
    plan = check_inputs(image, scale, noise_scale)
    device = torch.device(store.device)
    settings = getattr(store, "accel", None) or AccelSettings()
    on_cuda = device.type == "cuda" and settings.enabled
    if tile_size is None:
        tile_size = settings.upscaler_tile if on_cuda else DEFAULT_TILE_SIZE
    if tile_batch is None:
        tile_batch = settings.upscaler_batch if on_cuda else 1
    if tile_size < 8 or tile_overlap < 0 or tile_batch < 1:
        raise ValueError("tile_size must be >= 8, tile_overlap >= 0 and tile_batch >= 1")
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
        network = inference_network(network, upscaler_dtype(device, settings),
                                    channels_last=on_cuda)
        pixels = run_tiled(network, np.asarray(rgb), plan.model_factor, ctx,
                           tile_size=tile_size, tile_overlap=tile_overlap, device=device,
                           batch=tile_batch, channels_last=on_cuda, as_tensor=True)
        resampled = None
        if network_weight < 1.0:
            resampled = np.asarray(rgb.resize(plan.model_size, Image.Resampling.BICUBIC))
        result = Image.fromarray(_to_uint8(pixels, network_weight, resampled))

    if result.size != plan.output_size:
        result = result.resize(plan.output_size, Image.Resampling.LANCZOS)
    if has_alpha:
        alpha = image.convert("RGBA").getchannel("A")
        result.putalpha(alpha.resize(plan.output_size, Image.Resampling.BICUBIC))
    if mode in ("L", "LA"):
        result = result.convert(mode)
    ctx.report(1.0)
    return result


@torch.inference_mode()
def _to_uint8(pixels: torch.Tensor, network_weight: float,
              resampled: np.ndarray | None) -> np.ndarray:
    """`w · network + (1 − w) · resampled` rounded to uint8 H×W×3, where `pixels` lives (in
    place: the float image can be hundreds of MB)."""
    if resampled is not None:
        pixels *= network_weight
        pixels += (1.0 - network_weight) * torch.from_numpy(
            resampled.astype(np.float32)).to(pixels.device)
    return pixels.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


_LOCK = threading.Lock()
_DNI_NETWORKS: "weakref.WeakKeyDictionary[Any, OrderedDict]" = weakref.WeakKeyDictionary()
_INFERENCE_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def denoise_network(store: Any, strength: float) -> torch.nn.Module:
    """general-x4v3 interpolated with its weak-denoise twin: `strength` 1 → general, 0 → wdn.
    Interpolated networks are kept per store for the last few strengths."""
    from retouch.models.realesrgan_arch import interpolate_state_dicts

    strength = min(1.0, max(0.0, float(strength)))
    if strength == 1.0:
        return store.upscaler(X4_MODEL)
    if strength == 0.0:
        return store.upscaler(X4_WEAK_DENOISE_MODEL)
    with _LOCK:
        cached = _DNI_NETWORKS.setdefault(store, OrderedDict())
        if strength in cached:
            cached.move_to_end(strength)
            return cached[strength]
    weights = interpolate_state_dicts(store.upscaler_weights(X4_MODEL),
                                      store.upscaler_weights(X4_WEAK_DENOISE_MODEL), strength)
    network = store.build_upscaler(X4_MODEL, weights)
    with _LOCK:
        cached[strength] = network
        while len(cached) > DNI_CACHE_SIZE:
            cached.popitem(last=False)
    return network


def inference_network(network: torch.nn.Module, dtype: torch.dtype, *,
                      channels_last: bool = False) -> torch.nn.Module:
    """`network` itself when it already is `dtype` and no layout change is asked for, else a
    cached copy in `dtype` (and channels_last); the store's network is never changed."""
    if next(network.parameters()).dtype == dtype and not channels_last:
        return network
    key = (dtype, channels_last)
    with _LOCK:
        copies = _INFERENCE_COPIES.setdefault(network, {})
        if key not in copies:
            converted = copy.deepcopy(network).to(dtype=dtype)
            if channels_last:
                converted = converted.to(memory_format=torch.channels_last)
            copies[key] = converted.eval()
        return copies[key]


def tile_boxes(width: int, height: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) tiles covering the image, row by row."""
    return [(left, top, min(left + tile_size, width), min(top + tile_size, height))
            for top in range(0, height, tile_size) for left in range(0, width, tile_size)]


def tile_passes(boxes: list[tuple[int, int, int, int]], overlap: int, width: int, height: int,
                batch: int) -> list[list[tuple[tuple[int, int, int, int], tuple[int, ...]]]]:
    """(tile box, context box) pairs grouped into forward passes: at most `batch` tiles each,
    all of one pass with context windows of the same shape (so they stack into one tensor)."""
    by_shape: dict[tuple[int, int], list] = {}
    for left, top, right, bottom in boxes:
        window = (max(0, left - overlap), max(0, top - overlap),
                  min(width, right + overlap), min(height, bottom + overlap))
        shape = (window[3] - window[1], window[2] - window[0])
        by_shape.setdefault(shape, []).append(((left, top, right, bottom), window))
    return [members[start:start + batch] for members in by_shape.values()
            for start in range(0, len(members), batch)]


@torch.inference_mode()
def run_tiled(network: torch.nn.Module, pixels: np.ndarray, factor: int, ctx: RunContext, *,
              tile_size: int, tile_overlap: int, device: torch.device | str = "cpu",
              batch: int = 1, channels_last: bool = False, as_tensor: bool = False
              ) -> np.ndarray | torch.Tensor:
    """Run `network` (×`factor`) over uint8 H×W×3 `pixels` tile by tile → float32 H'×W'×3 in
    0…255 (a numpy array, or with `as_tensor` a tensor on `device`). Odd sizes are edge-padded
    to even first (the ×2 net pixel-unshuffles its input). `channels_last` lays the tiles out
    like a channels_last network's weights."""
    height, width = pixels.shape[:2]
    dtype = next(network.parameters()).dtype
    source = torch.from_numpy(np.array(pixels, dtype=np.uint8)).to(device)
    source = source.permute(2, 0, 1)[None].float() / 255
    pad_w, pad_h = width % 2, height % 2
    if pad_w or pad_h:
        source = F.pad(source, (0, pad_w, 0, pad_h), mode="replicate")
    padded_h, padded_w = source.shape[2:]
    # Even tile sizes and overlaps keep every tile origin even for the ×2 network.
    tile_size += tile_size % 2
    tile_overlap += tile_overlap % 2
    output = torch.empty((padded_h * factor, padded_w * factor, 3), dtype=torch.float32,
                         device=device)
    passes = tile_passes(tile_boxes(padded_w, padded_h, tile_size), tile_overlap,
                         padded_w, padded_h, batch)
    done, total = 0, sum(len(tiles) for tiles in passes)
    for tiles in passes:
        ctx.check_cancelled()
        stacked = torch.cat([source[:, :, top:bottom, left:right]
                             for _, (left, top, right, bottom) in tiles]).to(dtype)
        if channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        upscaled = network(stacked).float().clamp_(0, 1).mul_(255).permute(0, 2, 3, 1)
        for index, ((left, top, right, bottom), (ctx_left, ctx_top, _, _)) in enumerate(tiles):
            output[top * factor:bottom * factor, left * factor:right * factor] = upscaled[
                index, (top - ctx_top) * factor:(bottom - ctx_top) * factor,
                (left - ctx_left) * factor:(right - ctx_left) * factor]
        done += len(tiles)
        ctx.report(done / total * 0.95)
    output = output[:height * factor, :width * factor]
    return output if as_tensor else output.cpu().numpy()
