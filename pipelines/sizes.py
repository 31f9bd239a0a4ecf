"""Output sizes and working sizes.

Two sizes matter for every diffusion job:

* **Output size** — what the client gets, exactly. For a named aspect ratio it is the seed's size
  (`vocabulary.ASPECT_RATIOS`, e.g. "4:5" → 1536×1920). For `original` it is the model's native
  square (`native_size × native_size`) for the generator, and the main input's own size for the
  image-to-image tools, scaled down (aspect kept) when its longer side exceeds `MAX_ORIGINAL_SIDE`
  (2560 px, the largest side among the seed's sizes).

* **Working size** — where diffusion runs. A model is trained around `native_size²` pixels, so the
  job runs at a bucket of about that many pixels with the output's aspect ratio, each side a
  multiple of the model's size step (VAE factor × UNet down-sampling: 64 is safe for SDXL, the
  tiny profile uses smaller). The result is then resized with Lanczos to the exact output size.
  Inputs are resized to the working size on the way in (Lanczos for images, nearest for masks).
"""

from __future__ import annotations

import math

from PIL import Image

from .vocabulary import ASPECT_RATIOS

MAX_ORIGINAL_SIDE = 2560


def output_size(aspect_ratio: str, *, native_size: int,
                source_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The exact (width, height) of the job's output."""
    fixed = ASPECT_RATIOS[aspect_ratio]
    if fixed is not None:
        return fixed
    if source_size is None:
        return (native_size, native_size)
    width, height = source_size
    longest = max(width, height)
    if longest <= MAX_ORIGINAL_SIDE:
        return (width, height)
    scale = MAX_ORIGINAL_SIDE / longest
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def working_size(size: tuple[int, int], *, native_size: int, multiple: int = 8) -> tuple[int, int]:
    """A ~native_size² pixel bucket with the aspect of `size`, sides multiples of `multiple`."""
    width, height = size
    aspect = width / height
    area = native_size * native_size
    work_w = math.sqrt(area * aspect)
    work_h = math.sqrt(area / aspect)

    def snap(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    return (snap(work_w), snap(work_h))


def resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos resize (a no-op copy when the size already matches)."""
    if image.size == tuple(size):
        return image.copy()
    return image.resize(tuple(size), Image.Resampling.LANCZOS)


def resize_mask_to(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Nearest-neighbour resize for binary masks (keeps them binary)."""
    if mask.size == tuple(size):
        return mask.copy()
    return mask.resize(tuple(size), Image.Resampling.NEAREST)


def _cover_box(source: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred crop of `source` with the aspect ratio of `size`."""
    src_w, src_h = source
    target_aspect = size[0] / size[1]
    if src_w / src_h > target_aspect:
        crop_w = max(1, round(src_h * target_aspect))
        left = (src_w - crop_w) // 2
        return (left, 0, left + crop_w, src_h)
    crop_h = max(1, round(src_w / target_aspect))
    top = (src_h - crop_h) // 2
    return (0, top, src_w, top + crop_h)


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop to the aspect of `size`, then Lanczos-resize to it (no distortion)."""
    if image.size == tuple(size):
        return image.copy()
    return resize_to(image.crop(_cover_box(image.size, size)), size)


def fit_mask_to_size(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`fit_to_size` for masks: the same crop, nearest-neighbour resize."""
    if mask.size == tuple(size):
        return mask.copy()
    return resize_mask_to(mask.crop(_cover_box(mask.size, size)), size)
