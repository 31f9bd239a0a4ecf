"""Photographer placement modes: person_placement, cloth_change, location_change, object_placement.

All four inpaint one region of the main image (fitted to the output size) and paste the untouched
pixels back bit-exact (`erase.inpaint_region`). They differ in where the region comes from and
how `secondary_images` take part:

- person_placement: `main_image` is the scene, `secondary_images[0]` the person. Where the person
  stands is decided from the scene's depth (`ground.py`: the floor plane fitted to the lower
  image, the person's height in pixels from the depth at the foot point, the position from
  `text_prompt`'s left/right/centre/near/far and the free floor: boxes over things standing on
  the floor are avoided). The person is cut out of the reference with the matting model's soft
  alpha (`matted_subject`: U²-Net, `scene.subject_alpha`), scaled to that box and stood on its
  foot point through that alpha (`stand_subject`); the inpaint then re-renders that footprint at
  `HARMONISE_STRENGTH`, plus a contact band around the feet (`CONTACT_BAND`) where the shadow and
  the floor contact are drawn, so light and edges match the scene while the pasted pixels keep
  the identity. Without a reference a person is drawn into the same box from the prompt.
  Without a usable floor (none found, or no box fits) the person stands bottom centre at
  `PERSON_HEIGHT` of the frame.
- cloth_change: the region is the clothing labels of the segmenter (upper clothes, skirt, pants,
  dress, belt, scarf), dilated; references are pasted into the region's bounding box first
  (reference-initialised inpainting at `REFERENCE_STRENGTH`) so they set garment colour/texture.
- location_change: the region is the "Background" label, i.e. the person stays and the
  surroundings become the `text_prompt` location; a reference pre-fills the background.
- object_placement: the region is a box standing on free horizontal surface (the floor or a
  surface whose depth normal points up, `ground.choose_object_box`), sized by its depth, on the
  side `text_prompt` asks for and off things already standing there; words that put it off any
  surface ("top", "above", "sky", "wall") or a scene without surfaces use the word box
  (`object_box`: "left", "right", "top", "bottom", "center" ...; default the lower middle).
  Without a reference the whole box is drawn from the prompt. With one, the product is matted
  out of it like the person (its backdrop never reaches the scene), fitted into the box keeping
  its aspect, stood on the box's bottom edge, and only its footprint and contact band are
  harmonised (`HARMONISE_STRENGTH`): the rest of the box stays the scene's own pixels.

When the segmenter finds nothing usable (no clothing, no background), a fixed box stands in
(`FALLBACK_BOXES`), so a job never silently returns its input; when the matte finds no subject
(or nothing but subject) the whole reference is pasted, opaque.

In every mode all `secondary_images` (not only the first, which the paste/cut-out uses) also
condition the inpaint through the IP-Adapter (`edit.reference_conditioning`, scale
`REFERENCE_SCALE`): the paste fixes where and roughly what, the adapter carries the references'
look into the re-rendered pixels. Several references go to the adapter as one list (their image
tokens concatenated). Without references no adapter is loaded.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from . import erase, ground, prompts, scene
from .angle import depth_from_relative
from .common import RunContext
from .edit import reference_conditioning
from .erase import INPAINT_STRENGTH
from .errors import PipelineInputError
from .sizes import fit_to_size, output_size, resize_mask_to, resize_to, working_size

MAIN = "input.main_image"
CLOTHING_LABELS = ("Upper-clothes", "Skirt", "Pants", "Dress", "Belt", "Scarf")
PERSON_HEIGHT = 0.6
HARMONISE_STRENGTH = 0.5
REFERENCE_STRENGTH = 0.85
REFERENCE_SCALE = 0.6
# (left, top, right, bottom) as fractions of the frame.
FALLBACK_BOXES = {"person": (0.3, 0.3, 0.7, 0.95), "clothing": (0.3, 0.35, 0.7, 0.8),
                  "surroundings_keep": (0.25, 0.15, 0.75, 1.0)}
OBJECT_BOX_SIZE = 0.34
PERSON_ASPECT = 0.4  # width/height of the box for a person drawn without a reference
CONTACT_BAND = (0.15, 0.06, 0.04)  # wider by, above and below the feet, × the person's box
OFF_SURFACE_WORDS = ("top", "above", "upper", "sky", "wall", "ceiling", "hanging")
MATTE_FLOOR = 0.02  # matte values below this are backdrop (U²-Net's normalised noise floor)


def secondary_images(images: dict[str, Image.Image]) -> list[Image.Image]:
    keys = sorted((k for k in images if k.startswith("input.secondary_images[")),
                  key=lambda k: int(k[len("input.secondary_images["):-1]))
    return [images[k].convert("RGB") for k in keys]


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    if images.get(MAIN) is None:
        raise PipelineInputError(MAIN, "is required")
    for i in range(len(request.input.secondary_images)):
        if images.get(f"input.secondary_images[{i}]") is None:
            raise PipelineInputError(f"input.secondary_images[{i}]", "image is missing")
    if request.options.mode == "location_change" and not request.input.text_prompt.strip():
        raise PipelineInputError("input.text_prompt", "is required for mode location_change")


def box_mask(size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    w, h = size
    left, top, right, bottom = (round(box[0] * w), round(box[1] * h), round(box[2] * w),
                                round(box[3] * h))
    mask = np.zeros((h, w), dtype=bool)
    mask[top:max(bottom, top + 1), left:max(right, left + 1)] = True
    return mask


def dilate(mask: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    kernel = max(3, int(round(fraction * min(mask.shape))) | 1)
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    return np.asarray(image.filter(ImageFilter.MaxFilter(kernel))) >= 128


def segment_labels(store, image: Image.Image, *labels: str, exclude: bool = False) -> np.ndarray:
    """Mask of `labels` (or of everything else with `exclude`) at `image`'s size.

    Segments at the working size, then resizes the mask with nearest (cheap at any output size).
    """
    work = working_size(image.size, native_size=max(store.native_size, 64), multiple=8)
    segmentation = store.segmenter()(resize_to(image, work))
    mask = segmentation.mask(*labels)
    if exclude:
        mask = ~mask
    small = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    return np.asarray(resize_mask_to(small, image.size)) >= 128


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def prefill(base: Image.Image, mask: np.ndarray, reference: Image.Image) -> Image.Image:
    """`base` with `reference` fitted into the mask's bounding box, inside the mask only."""
    box = bounding_box(mask)
    if box is None:
        return base
    canvas = base.copy()
    patch = fit_to_size(reference, (box[2] - box[0], box[3] - box[1]))
    layer = canvas.copy()
    layer.paste(patch, box[:2])
    return Image.fromarray(np.where(mask[..., None], np.asarray(layer), np.asarray(canvas)), "RGB")


def _frame(store, request, images) -> Image.Image:
    source = images[MAIN].convert("RGB")
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=source.size)
    return fit_to_size(source, size)


def inpaint_region(store, ctx: RunContext, base: Image.Image, mask: np.ndarray, prompt: str,
                   negative_prompt: str, steps: int, *, progress=None,
                   strength: float = INPAINT_STRENGTH,
                   references: list[Image.Image] = ()) -> Image.Image:
    """`erase.inpaint_region` with `references` conditioning the inpaint through the IP-Adapter.

    Without references it is exactly `erase.inpaint_region` (no adapter is loaded).
    """
    with reference_conditioning(store, store.inpaint(), references,
                                REFERENCE_SCALE) as reference_kwargs:
        return erase.inpaint_region(store, ctx, base, mask, prompt, negative_prompt, steps,
                                    progress=progress, strength=strength, **reference_kwargs)


def _finish(store, request, ctx, base, mask, prompt, strength,
            references: list[Image.Image]) -> list[Image.Image]:
    ctx.check_cancelled()
    ctx.report(0.15)
    steps = store.quality_steps[request.options.quality]
    result = inpaint_region(store, ctx, base, mask, prompt, prompts.NEGATIVE_PROMPT, steps,
                            progress=ctx.stage(0.15, 1.0), strength=strength,
                            references=references)
    ctx.report(1.0)
    return [result]


def _finish_prefilled(store, request, ctx, images, base, mask, prompt) -> list[Image.Image]:
    """`_finish` for the modes whose first reference (if any) pre-fills the region first."""
    references = secondary_images(images)
    strength = INPAINT_STRENGTH
    if references:
        base, strength = prefill(base, mask, references[0]), REFERENCE_STRENGTH
    return _finish(store, request, ctx, base, mask, prompt, strength, references)


def scene_depth(store, image: Image.Image) -> tuple[np.ndarray, float]:
    """Scene depth of `image` at a small working size, and the factor back to `image`'s pixels."""
    work = working_size(image.size, native_size=max(store.native_size, 64), multiple=8)
    relative = store.depth_estimator()(resize_to(image, work))
    return depth_from_relative(relative), image.width / work[0]


def person_layout(store, scene: Image.Image, text_prompt: str,
                  aspect: float) -> tuple[tuple[int, int, int, int], ground.Placement | None]:
    """The person's box in `scene` pixels, and the decision it came from (None: fallback)."""
    depth, scale = scene_depth(store, scene)
    placement = ground.choose_person_box(ground.fit_ground_plane(depth), text_prompt, aspect)
    if placement is None:
        height = max(1, round(PERSON_HEIGHT * scene.height))
        width = max(1, min(scene.width, round(aspect * height)))
        left, bottom = (scene.width - width) // 2, round(0.95 * scene.height)
        return (left, max(0, bottom - height), left + width, bottom), None
    box = tuple(int(round(c * scale)) for c in placement.box)
    box = (max(0, box[0]), max(0, box[1]), min(scene.width, box[2]), min(scene.height, box[3]))
    return box, placement


def contact_band(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The strip around the feet of a person standing in `box`, where shadow and contact go."""
    w, h = size
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    wider, above, below = CONTACT_BAND
    mask = np.zeros((h, w), dtype=bool)
    mask[max(0, round(bottom - above * bh)):min(h, round(bottom + below * bh) + 1),
         max(0, round(left - wider * bw)):min(w, round(right + wider * bw))] = True
    return mask


def matted_subject(store, reference: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """`reference` cropped to its subject and the subject's soft alpha there (the matting model).

    Without a subject in the matte (none, or nothing but subject) it is the whole reference with
    an opaque alpha.
    """
    alpha = scene.subject_alpha(store, reference)
    alpha = np.where(alpha < MATTE_FLOOR, 0.0, alpha).astype(np.float32)
    share = float((alpha >= 0.5).mean())
    box = bounding_box(alpha > 0)
    if box is None or share in (0.0, 1.0):
        return reference, np.ones((reference.height, reference.width), dtype=np.float32)
    return reference.crop(box), alpha[box[1]:box[3], box[0]:box[2]]


def stand_subject(base: Image.Image, subject: Image.Image, alpha: np.ndarray,
                  box: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """`subject` fitted inside `box` (aspect kept; its full height unless that overflows the
    width by more than a rounding pixel), centred on its bottom edge and composited over `base`
    through `alpha`; `(composite, region to harmonise)`. The region is the subject's footprint,
    dilated, and the contact band under it; outside the footprint `base` is unchanged.
    """
    box_w, box_h = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    scale = box_h / subject.height
    if subject.width * scale > box_w + 1:
        scale = box_w / subject.width
    width, height = max(1, round(subject.width * scale)), max(1, round(subject.height * scale))
    left, top = box[0] + (box_w - width) // 2, box[3] - height
    patch = np.asarray(resize_to(subject, (width, height)))
    patch_alpha = scene.resize_alpha(alpha, (width, height))
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(base.width, left + width), min(base.height, top + height)
    placed = np.zeros((base.height, base.width), dtype=np.float32)
    layer = np.asarray(base).copy()
    placed[y0:y1, x0:x1] = patch_alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    layer[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    composite = scene.soft_paste(base, Image.fromarray(layer, "RGB"), placed)
    region = dilate(placed > 0, 0.02) | contact_band(base.size, (left, top, left + width,
                                                                 top + height))
    return composite, region


def person_placement(store, request, images, ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    scene_image = _frame(store, request, images)
    references = secondary_images(images)
    text = request.input.text_prompt
    prompt = prompts.person_placement_prompt(text)
    if not references:
        box, _ = person_layout(store, scene_image, text, PERSON_ASPECT)
        region = np.zeros((scene_image.height, scene_image.width), dtype=bool)
        region[box[1]:box[3], box[0]:box[2]] = True
        return _finish(store, request, ctx, scene_image,
                       region | contact_band(scene_image.size, box), prompt, INPAINT_STRENGTH,
                       references)
    person, alpha = matted_subject(store, references[0])
    box, _ = person_layout(store, scene_image, text, person.width / person.height)
    base, region = stand_subject(scene_image, person, alpha, box)
    return _finish(store, request, ctx, base, region, prompt, HARMONISE_STRENGTH, references)


def cloth_change(store, request, images, ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    base = _frame(store, request, images)
    mask = segment_labels(store, base, *CLOTHING_LABELS)
    if not mask.any():
        mask = box_mask(base.size, FALLBACK_BOXES["clothing"])
    mask = dilate(mask)
    return _finish_prefilled(store, request, ctx, images, base, mask,
                             prompts.cloth_change_prompt(request.input.text_prompt))


def location_change(store, request, images, ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    base = _frame(store, request, images)
    mask = segment_labels(store, base, "Background")
    if not mask.any() or mask.all():
        mask = ~box_mask(base.size, FALLBACK_BOXES["surroundings_keep"])
    return _finish_prefilled(store, request, ctx, images, base, mask,
                             prompts.location_change_prompt(request.input.text_prompt))


def object_box(text_prompt: str) -> tuple[float, float, float, float]:
    """Where the object goes, from placement words in the prompt (default: lower middle)."""
    words = text_prompt.lower()
    size = OBJECT_BOX_SIZE
    x = 0.5
    y = 0.7
    if "left" in words:
        x = 0.22
    elif "right" in words:
        x = 0.78
    if any(w in words for w in ("top", "above", "upper", "sky", "wall")):
        y = 0.25
    elif any(w in words for w in ("center", "centre", "middle")):
        y = 0.5
    elif any(w in words for w in ("bottom", "floor", "ground", "lower", "table")):
        y = 0.75
    half = size / 2
    x, y = min(max(x, half), 1 - half), min(max(y, half), 1 - half)
    return (x - half, y - half, x + half, y + half)


def object_region(store, base: Image.Image, text_prompt: str) -> np.ndarray:
    """Where the object goes in `base`: on free surface (depth), else the word box."""
    words = text_prompt.lower()
    if not any(word in words for word in OFF_SURFACE_WORDS):
        depth, scale = scene_depth(store, base)
        placement = ground.choose_object_box(depth, text_prompt)
        if placement is not None:
            left, top, right, bottom = (int(round(c * scale)) for c in placement.box)
            mask = np.zeros((base.height, base.width), dtype=bool)
            mask[max(0, top):bottom, max(0, left):right] = True
            if mask.any():
                return mask
    return box_mask(base.size, object_box(text_prompt))


def object_placement(store, request, images, ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    ctx.report(0.0)
    base = _frame(store, request, images)
    text = request.input.text_prompt
    region = object_region(store, base, text)
    prompt = prompts.object_placement_prompt(text)
    references = secondary_images(images)
    if not references:
        return _finish(store, request, ctx, base, region, prompt, INPAINT_STRENGTH, references)
    product, alpha = matted_subject(store, references[0])
    base, region = stand_subject(base, product, alpha, bounding_box(region))
    return _finish(store, request, ctx, base, region, prompt, HARMONISE_STRENGTH, references)
