"""Scene understanding: enhancement regions from an ADE20K label map, the matting alpha and the
placements' cut-outs through it.

A random tiny twin cannot see a room, so the region and alpha logic is tested with a segmenter /
matter whose answer is known: synthetic scenes drawn together with their ADE20K label map, served
through the store's own interface (`scene_segmenter()(image) -> Segmentation`, `matter()(image)
-> alpha`). The real classes are tested separately: they load through the registry and return a
label map / alpha of the right shape and range."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from retouch.models.registry import ADE20K_LABELS, resolve_profile
from retouch.models.store import Segmentation
from retouch.pipelines import placement, scene
from retouch.pipelines.actions import ACTIONS_BY_ID, enhancement_size
from retouch.pipelines.common import RunContext
from retouch.pipelines.enhance import enhancement_alpha
from retouch.pipelines.generate import cut_out_subject
from retouch.pipelines.sizes import fit_to_size, working_size
from retouch.serving.runner import TaskRunner
from retouch.serving.tasks import parse_request

ID = {name: i for i, name in enumerate(ADE20K_LABELS)}
# (class, colour, box as fractions) painted in order; later ones cover earlier ones.
ROOM = [("ceiling", (235, 235, 230), (0, 0, 1, 0.15)), ("wall", (200, 180, 150), (0, 0.15, 1, 0.65)),
        ("windowpane", (150, 190, 230), (0.6, 0.22, 0.85, 0.5)),
        ("sky", (120, 170, 240), (0.63, 0.25, 0.82, 0.47)),
        ("floor", (120, 80, 50), (0, 0.65, 1, 1)), ("sofa", (60, 90, 60), (0.1, 0.5, 0.45, 0.8)),
        ("person", (200, 120, 110), (0.5, 0.35, 0.58, 0.9))]
EXTERIOR = [("sky", (120, 170, 240), (0, 0, 1, 0.4)), ("building", (180, 170, 160), (0.2, 0.2, 0.8, 0.7)),
            ("grass", (70, 140, 60), (0, 0.7, 1, 1)), ("tree", (40, 90, 40), (0.82, 0.3, 0.95, 0.75))]


def draw(layers, size, labels: bool) -> Image.Image:
    w, h = size
    image = Image.new("L" if labels else "RGB", size, 0)
    pen = ImageDraw.Draw(image)
    for name, colour, (l, t, r, b) in layers:
        pen.rectangle([round(l * w), round(t * h), round(r * w) - 1, round(b * h) - 1],
                      fill=ID[name] if labels else colour)
    return image


class KnownSegmenter:
    """Returns the scene's true ADE20K labels at whatever size it is asked about."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, image: Image.Image) -> Segmentation:
        labels = np.asarray(draw(self.layers, image.size, labels=True), dtype=np.int32)
        return Segmentation(labels=labels, names=ADE20K_LABELS)


class KnownStore:
    """The tiny store with a segmenter / matter whose answers are known."""

    def __init__(self, store, layers=None, matter=None):
        self._store, self._segmenter, self._matter = store, KnownSegmenter(layers or []), matter

    def scene_segmenter(self):
        return self._segmenter

    def matter(self):
        return self._matter

    def __getattr__(self, name):
        return getattr(self._store, name)


def class_mask(layers, size, *names) -> np.ndarray:
    labels = np.asarray(draw(layers, size, labels=True))
    return np.isin(labels, [ID[n] for n in names])


def shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    return np.asarray(image.filter(ImageFilter.MinFilter(2 * pixels + 1))) >= 128


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * pixels + 1))) >= 128


def margins(store, size) -> tuple[int, int]:
    """Output pixels of (resampling, grow + feather + resampling): masks are made at the working
    size, where one pixel spans `scale` output pixels. The alpha is 1 on the region less the
    first margin and 0 beyond the second (the Gaussian feather reaches 3 radii)."""
    work = working_size(size, native_size=max(store.native_size, 64), multiple=8)
    scale = size[1] / work[1]
    reach = max(1, round(scene.GROW * min(work))) + 3 * max(1, round(scene.FEATHER * min(work)))
    return math.ceil(2 * scale), math.ceil((reach + 2) * scale)


def test_region_classes_are_ade20k_classes():
    for region, names in scene.REGION_CLASSES.items():
        assert set(names) <= set(ADE20K_LABELS), region
    for names in scene.COMPLEMENT_REGIONS.values():
        assert set(names) <= set(ADE20K_LABELS)


@pytest.mark.parametrize("layers, region, classes", [
    (ROOM, "walls", ("wall",)), (ROOM, "floor", ("floor",)), (ROOM, "ceiling", ("ceiling",)),
    (ROOM, "people", ("person",)), (ROOM, "furnishings", ("sofa",)),
    (ROOM, "interior", ("ceiling", "wall", "floor", "sofa")),
    (EXTERIOR, "sky", ("sky",)), (EXTERIOR, "ground", ("grass",)),
])
def test_region_masks_are_exactly_their_classes(layers, region, classes):
    size = (96, 64)
    segmentation = KnownSegmenter(layers)(Image.new("RGB", size))
    assert np.array_equal(scene.region_mask(segmentation, region),
                          class_mask(layers, size, *classes))


def test_feathered_alpha_covers_the_region_and_falls_to_exact_zero():
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 30:70] = True
    alpha = scene.feathered_alpha(mask)
    assert alpha.dtype == np.float32 and (alpha[mask] == 1).all()
    soft = (alpha > 0) & (alpha < 1)
    assert soft.any() and not (soft & mask).any()  # feathered outside the region only
    assert not (alpha[~grow(mask, 8)] > 0).any()  # and nothing beyond the feather


# (action, scene, classes the action edits)
LOCAL_ACTIONS = [
    ("renovation-floor", ROOM, ("floor",)), ("renovation-walls", ROOM, ("wall",)),
    ("interior-style-japandi", ROOM, ("ceiling", "wall", "floor", "sofa")),
    ("decluttering-remove-people", ROOM, ("person",)),
    ("exterior-sky-blue", EXTERIOR, ("sky",)), ("exterior-lawn", EXTERIOR, ("grass",)),
]


@pytest.mark.parametrize("action, layers, classes", LOCAL_ACTIONS)
def test_local_actions_edit_exactly_their_region(tiny_store, action, layers, classes):
    source = draw(layers, (96, 64), labels=False)
    store = KnownStore(tiny_store, layers)
    request = parse_request({"tool": "enhance", "input": {"image": {"upload_id": "u"}},
                             "options": {"actions": [action], "resolution": "1K",
                                         "quality": "low"}}, surface=None)
    [output] = TaskRunner(store).run(request, {"input.image": source}, RunContext(seed=3))
    size = enhancement_size("original", "1K", source.size)
    base = fit_to_size(source, size)
    region = class_mask(layers, size, *classes)
    alpha = enhancement_alpha(store, base, [ACTIONS_BY_ID[action].region])
    inner, outer = margins(tiny_store, size)
    assert (alpha[shrink(region, inner)] == 1).all()
    assert not (alpha[~grow(region, outer)] > 0).any()
    out, src = np.asarray(output), np.asarray(base)
    untouched = alpha == 0
    assert untouched.mean() > 0.01
    assert np.array_equal(out[untouched], src[untouched])  # bit-identical outside the feather
    assert not np.array_equal(out[alpha == 1], src[alpha == 1])  # the region was repainted


def test_interior_styles_keep_the_window_view(tiny_store):
    base = draw(ROOM, (384, 256), labels=False)
    alpha = enhancement_alpha(KnownStore(tiny_store, ROOM), base, ["interior"])
    view = shrink(class_mask(ROOM, base.size, "windowpane", "sky"), margins(tiny_store,
                                                                              base.size)[1])
    assert view.any() and not (alpha[view] > 0).any()


def test_a_region_the_segmenter_misses_falls_back_to_its_band(tiny_store):
    base = draw(ROOM, (96, 64), labels=False)
    alpha = enhancement_alpha(KnownStore(tiny_store, ROOM), base, ["ground"])  # no grass here
    assert alpha[-1].min() == 1 and not (alpha[:20] > 0).any()  # the lowest band


# ---- matting ----------------------------------------------------------------------------------
def product_shot(size=(80, 60)) -> tuple[Image.Image, np.ndarray]:
    """A red disc on a grey backdrop and its true soft alpha (anti-aliased edge)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    distance = np.hypot(xx - w / 2, yy - h / 2)
    alpha = np.clip(h / 3 - distance + 0.5, 0, 1).astype(np.float32)
    rgb = (alpha[..., None] * np.array([200, 30, 30]) + (1 - alpha[..., None]) * 128)
    return Image.fromarray(rgb.astype(np.uint8), "RGB"), alpha


class KnownMatter:
    def __init__(self, alpha: np.ndarray):
        self.alpha = alpha

    def __call__(self, image: Image.Image) -> np.ndarray:
        return scene.resize_alpha(self.alpha, image.size)


def test_cut_out_gives_the_backdrop_alpha_zero_and_keeps_soft_edges(tiny_store):
    image, alpha = product_shot()
    cut = cut_out_subject(KnownStore(tiny_store, matter=KnownMatter(alpha)), image)
    assert cut.mode == "RGBA" and cut.size == image.size
    out = np.asarray(cut.getchannel("A")).astype(int)
    # The matte, resampled to the working size and back: equal away from the 1-pixel edge.
    assert (out[~grow(alpha > 0, 2)] == 0).all() and (out[shrink(alpha == 1, 2)] == 255).all()
    assert np.abs(out - alpha * 255).mean() < 8
    assert ((out > 0) & (out < 255)).any()  # soft edge, not a hard mask
    assert np.array_equal(np.asarray(cut.convert("RGB")), np.asarray(image))


def test_nothing_to_cut_stays_opaque(tiny_store):
    image, _ = product_shot()
    for flat in (np.zeros((60, 80), np.float32), np.ones((60, 80), np.float32)):
        assert cut_out_subject(KnownStore(tiny_store, matter=KnownMatter(flat)), image).mode \
            == "RGB"


# ---- placements: the product / person cut out through the matte ------------------------------
PRODUCT_PROMPT = "a red vase on the left"
GREEN = (40, 110, 60)


def place_product(store, **images):
    request = parse_request({
        "tool": "photographer", "options": {"mode": "object_placement", "quality": "low"},
        "input": {"main_image": "https://e.x/a.png", "secondary_images": ["https://e.x/b.png"],
                  "text_prompt": PRODUCT_PROMPT}})
    return TaskRunner(store).run(request, images, RunContext(seed=2))


def product_box(store, scene_image):
    return placement.bounding_box(placement.object_region(store, scene_image, PRODUCT_PROMPT))


def test_object_placement_pastes_the_product_without_its_backdrop(tiny_store, monkeypatch):
    product, alpha = product_shot()  # a red disc on a grey backdrop
    store = KnownStore(tiny_store, matter=KnownMatter(alpha))
    scene_image = Image.new("RGB", (96, 64), GREEN)
    captured = {}

    def fake_inpaint(store, ctx, base, mask, prompt, negative, steps, **kwargs):
        captured.update(base=np.asarray(base).astype(int), mask=mask, strength=kwargs["strength"])
        return base

    monkeypatch.setattr(placement, "inpaint_region", fake_inpaint)
    place_product(store, **{"input.main_image": scene_image,
                            "input.secondary_images[0]": product})
    left, top, right, bottom = product_box(store, scene_image)
    base, mask = captured["base"], captured["mask"]
    changed = (base != GREEN).any(axis=-1)
    rows, cols = np.nonzero(changed)
    # The disc stands in the box on its bottom edge; nothing of the reference lands outside it.
    assert top <= rows.min() and rows.max() + 1 == bottom
    assert left <= cols.min() <= cols.max() < right
    greyish = (np.abs(base - 128) < 16).all(axis=-1)
    assert not greyish.any()  # the backdrop never reaches the scene
    centre = base[(rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2]
    assert centre[0] > 180 and centre[1] < 60  # the product itself is pasted
    corners = [(top, left), (top, right - 1)]
    assert all(not changed[r, c] and not mask[r, c] for r, c in corners)  # the box's free corners
    assert mask[changed].all() and mask.sum() < (right - left) * (bottom - top) * 1.5
    assert captured["strength"] == placement.HARMONISE_STRENGTH


def test_object_placement_keeps_the_scene_outside_the_product_bit_exact(tiny_store):
    product, alpha = product_shot()
    store = KnownStore(tiny_store, matter=KnownMatter(alpha))
    scene_image = draw(ROOM, (96, 64), labels=False)
    (out,) = place_product(store, **{"input.main_image": scene_image,
                                     "input.secondary_images[0]": product})
    subject, subject_alpha = placement.matted_subject(store, product)
    assert subject.size[0] < product.size[0]  # cropped to the disc, not the whole reference
    _, region = placement.stand_subject(scene_image, subject, subject_alpha,
                                        product_box(store, scene_image))
    out, src = np.asarray(out), np.asarray(scene_image)
    assert (~region).mean() > 0.5 and np.array_equal(out[~region], src[~region])
    assert not np.array_equal(out[region], src[region])  # the product was harmonised


# ---- the real classes through the registry ----------------------------------------------------
def test_scene_segmenter_loads_through_the_registry_and_labels_every_pixel(tiny_store):
    segmenter = tiny_store.scene_segmenter()
    assert type(segmenter.model).__name__ == "UperNetForSemanticSegmentation"
    assert segmenter.names == ADE20K_LABELS
    result = segmenter(Image.new("RGB", (72, 40), (90, 120, 150)))
    assert result.labels.shape == (40, 72) and result.labels.dtype == np.int32
    assert 0 <= result.labels.min() and result.labels.max() < 150
    assert tiny_store.revision("scene_segmenter").startswith("sha256:")


def test_matter_loads_through_the_registry_and_yields_an_alpha(tiny_store):
    image, _ = product_shot((72, 40))
    alpha = tiny_store.matter()(image)
    assert alpha.shape == (40, 72) and alpha.dtype == np.float32
    assert 0 <= alpha.min() and alpha.max() <= 1 and np.isfinite(alpha).all()
    assert tiny_store.revision("matting").startswith("sha256:")


def test_production_checkpoints_are_named_with_permissive_licences():
    sdxl = resolve_profile("sdxl")
    assert sdxl.spec("scene_segmenter").source == "openmmlab/upernet-convnext-small"
    assert sdxl.spec("matting").source.endswith("/U-2-Net/releases/download/v1.0/u2net.pth")


def test_full_size_twins_have_the_published_sizes():
    from retouch.models.store import ModelStore

    store = ModelStore(profile="sdxl-random", device="meta")
    # U²-Net: 44.0M parameters (the paper's 176.3 MB of float32); this arch gives 44,009,869.
    assert sum(p.numel() for p in store.matter().network.parameters()) == 44_009_869
    model = store.scene_segmenter().model
    # ConvNeXt-small backbone, 150 ADE20K classes (transformers' conversion of the checkpoint).
    assert model.config.backbone_config.depths == [3, 3, 27, 3]
    assert model.config.backbone_config.hidden_sizes == [96, 192, 384, 768]
    assert model.config.num_labels == 150 and model.config.auxiliary_in_channels == 384
