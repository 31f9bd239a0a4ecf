"""Scene understanding shared by the pipelines: action regions from an ADE20K label map, feathered
masks, soft paste-back, and the salient-object alpha.

- `REGION_CLASSES` maps each enhancement region to ADE20K class names (the scene segmenter's
  `id2label`); `region_mask(segmentation, region)` is the union of those classes' pixels.
  `interior` is the complement of what is seen through windows (and of people).
- `feathered_alpha(mask)` grows a region by `GROW` and feathers it by `FEATHER` (fractions of the
  short side): float alpha, 1 on the region itself, falling to exactly 0 outside the feather.
- `soft_paste(source, generated, alpha)`: generated where alpha is 1, blended in the feather,
  the source's exact bytes wherever alpha is 0.
- `subject_alpha(store, image)`: the matting model's soft alpha of the main subject.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .sizes import resize_to, working_size

GROW = 0.01
FEATHER = 0.015
# Masks smaller than this share of the frame count as "the segmenter found no such region".
MIN_REGION_FRACTION = 0.005

FURNITURE = (
    "bed", "cabinet", "table", "chair", "sofa", "shelf", "armchair", "seat", "desk", "wardrobe",
    "lamp", "cushion", "chest of drawers", "pool table", "pillow", "bookcase", "coffee table",
    "bench", "swivel chair", "ottoman", "buffet", "stool", "cradle", "television receiver",
    "computer", "monitor", "crt screen", "screen", "fan", "plant", "flower", "pot", "vase",
    "painting", "poster", "mirror", "curtain", "blind", "sculpture", "clock", "bulletin board",
    "arcade machine",
)
CLUTTER = (
    "box", "bag", "bottle", "book", "apparel", "plaything", "basket", "towel", "blanket", "ball",
    "food", "tray", "ashcan", "plate", "glass", "barrel", "bicycle", "minibike",
)
SURFACES = ("floor", "rug", "table", "desk", "counter", "countertop", "coffee table",
            "kitchen island", "shelf", "bed", "sofa", "chest of drawers")
# What a window or an open door shows of the outside.
OUTSIDE_VIEW = (
    "windowpane", "sky", "tree", "building", "house", "skyscraper", "mountain", "hill", "sea",
    "water", "river", "lake", "grass", "field", "road", "sidewalk", "car", "palm", "tower",
    "bridge", "streetlight",
)

REGION_CLASSES: dict[str, tuple[str, ...]] = {
    "walls": ("wall", "column"),
    "floor": ("floor", "rug"),
    "ceiling": ("ceiling",),
    "sky": ("sky",),
    "ground": ("grass", "field", "earth", "land"),  # the lawn
    "people": ("person",),
    "furnishings": FURNITURE + CLUTTER,  # what "empty the room" takes out
    "surfaces": SURFACES + CLUTTER,  # what "tidy up" clears
    "windows": ("windowpane",),
}
# Regions defined as everything except these classes.
COMPLEMENT_REGIONS: dict[str, tuple[str, ...]] = {"interior": OUTSIDE_VIEW + ("person",)}
SCENE_REGIONS = tuple(REGION_CLASSES) + tuple(COMPLEMENT_REGIONS)


def region_mask(segmentation, region: str) -> np.ndarray:
    """Boolean H×W mask of `region` in an ADE20K `Segmentation` (classes the model lacks are
    skipped, so any ADE20K-labelled segmenter works)."""
    if region in COMPLEMENT_REGIONS:
        excluded = [n for n in COMPLEMENT_REGIONS[region] if n in segmentation.names]
        return ~segmentation.mask(*excluded) if excluded else np.ones_like(
            segmentation.labels, dtype=bool)
    names = [n for n in REGION_CLASSES[region] if n in segmentation.names]
    if not names:
        return np.zeros_like(segmentation.labels, dtype=bool)
    return segmentation.mask(*names)


def segment_scene(store, image: Image.Image):
    """The scene segmenter's `Segmentation` of `image` resized to the working size (the label
    map has that size: masks are built there and their alpha resized to the output)."""
    work = working_size(image.size, native_size=max(store.native_size, 64), multiple=8)
    return store.scene_segmenter()(resize_to(image, work))


def _pixels(fraction: float, shape: tuple[int, ...]) -> int:
    return max(1, int(round(fraction * min(shape[:2]))))


def feathered_alpha(mask: np.ndarray, grow: float = GROW, feather: float = FEATHER) -> np.ndarray:
    """Float32 alpha: 1 on `mask`, grown by `grow` and feathered by `feather` (fractions of the
    short side) into exact zeros."""
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    grown = image.filter(ImageFilter.MaxFilter(2 * _pixels(grow, mask.shape) + 1))
    soft = grown.filter(ImageFilter.GaussianBlur(_pixels(feather, mask.shape)))
    alpha = np.asarray(soft, dtype=np.float32) / 255.0
    alpha[mask] = 1.0
    return alpha


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`alpha` bilinear at `size` (width, height); zeros stay exact zeros away from the edge."""
    if (alpha.shape[1], alpha.shape[0]) == tuple(size):
        return alpha
    resized = Image.fromarray(alpha.astype(np.float32), "F").resize(size, Image.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def soft_paste(source: Image.Image, generated: Image.Image, alpha: np.ndarray) -> Image.Image:
    """`generated` over `source` through `alpha`; where alpha is 0 the source's exact pixels."""
    src = np.asarray(source.convert("RGB"))
    gen = np.asarray(generated.convert("RGB"))
    if src.shape != gen.shape or alpha.shape != src.shape[:2]:
        raise ValueError("source, generated image and alpha must have the same size")
    a = alpha[..., None].astype(np.float32)
    blended = np.rint(src * (1.0 - a) + gen * a).astype(np.uint8)
    return Image.fromarray(np.where(a > 0, blended, src), "RGB")


def subject_alpha(store, image: Image.Image) -> np.ndarray:
    """Float32 H×W alpha in [0, 1] of the image's main subject (the matting model), at
    `image`'s size; matted at the working size, resized bilinear."""
    work = working_size(image.size, native_size=max(store.native_size, 64), multiple=8)
    return resize_alpha(store.matter()(resize_to(image, work)), image.size)


def cut_out(image: Image.Image, alpha: np.ndarray) -> Image.Image:
    """RGBA: `image` with `alpha` (0..1) as its transparency."""
    rgba = image.convert("RGB").copy()
    rgba.putalpha(Image.fromarray(np.rint(np.clip(alpha, 0, 1) * 255).astype(np.uint8), "L"))
    return rgba
