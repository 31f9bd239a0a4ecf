"""Runner dispatch over every tool, mode and filter on the tiny profile (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines.common import RunContext
from retouch.serving.runner import TaskRunner
from retouch.pipelines.errors import Cancelled
from retouch.serving.core.errors import InvalidInput
from retouch.pipelines.images import encode_image
from retouch.serving.tasks import parse_request
from retouch.pipelines.vocabulary import AI_FILTERS, ANGLES, ASPECT_RATIOS, SEASONS, TIMES, WEATHERS
from retouch.serving.tasks import TASKS

URL = "https://example.com/image.png"


@pytest.fixture(scope="module")
def runner(tiny_store):
    return TaskRunner(tiny_store)


def photo(width=96, height=80, seed=0) -> Image.Image:
    """A smooth but non-trivial test photo: gradients plus a bright block."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    rgb = rgb + rng.integers(0, 20, rgb.shape)
    rgb[height // 4: height // 2, width // 3: 2 * width // 3] = (230, 200, 60)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def mask_image(width=96, height=80, box=(30, 20, 60, 50)) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def photographer(mode, *, quality="low", aspect="original", **inputs):
    body_input = {"main_image": URL, **inputs}
    return parse_request({"tool": "photographer", "input": body_input,
                          "options": {"mode": mode, "quality": quality, "aspect_ratio": aspect}})


def images_for(request, **overrides) -> dict[str, Image.Image]:
    defaults = {"input.main_image": photo(), "input.image": photo(),
                "input.mask_image": mask_image()}
    found = {}
    for key in request.image_fields():
        if key in overrides:
            found[key] = overrides[key]
        elif key in defaults:
            found[key] = defaults[key]
        else:  # references: a different photo per index
            found[key] = photo(64, 64, seed=len(found) + 1).rotate(90)
    return found


def run(runner, request, seed=7, **overrides):
    return runner.run(request, images_for(request, **overrides), RunContext(seed=seed))


# ---- generator --------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", list(ASPECT_RATIOS))
def test_generator_exact_size_for_every_aspect_ratio(runner, ratio):
    request = parse_request({"tool": "generator", "input": {"prompt": "a red chair"},
                                        "options": {"quality": "low", "aspect_ratio": ratio}})
    (image,) = run(runner, request)
    expected = ASPECT_RATIOS[ratio] or (runner.store.native_size,) * 2
    assert image.size == expected and image.mode == "RGB"


def test_generator_same_seed_same_bytes_and_different_seed_differs(runner):
    request = parse_request({"tool": "generator", "input": {"prompt": "a lighthouse"},
                                        "options": {"quality": "low"}})
    first = encode_image(run(runner, request, seed=11)[0], "png")
    again = encode_image(run(runner, request, seed=11)[0], "png")
    other = encode_image(run(runner, request, seed=12)[0], "png")
    assert first == again and first != other


def test_generator_auto_background_cuts_out_the_subject(runner, tiny_store):
    def generate(prompt, background, fmt):
        request = parse_request({
            "tool": "generator", "input": {"prompt": prompt},
            "options": {"quality": "low", "background": background, "output_format": fmt}})
        return run(runner, request)[0]

    cut = generate("a sneaker, isolated on a transparent background", "auto", "png")
    assert cut.mode == "RGBA"
    from retouch.pipelines.scene import subject_alpha

    matte = subject_alpha(tiny_store, cut.convert("RGB"))  # the matting model's soft alpha
    alpha = np.asarray(cut.getchannel("A"))
    assert np.array_equal(alpha, np.rint(matte * 255).astype(np.uint8))
    assert 0 < (alpha >= 128).mean() < 1
    assert generate("a sneaker, isolated", "auto", "jpeg").mode == "RGB"
    assert generate("a sneaker, isolated", "opaque", "png").mode == "RGB"
    assert generate("a sneaker on a street", "auto", "webp").mode == "RGB"


# ---- editor -----------------------------------------------------------------------------------
def test_editor_uses_first_image_size_and_references_change_the_result(runner):
    one = parse_request({"tool": "editor", "input": {"images": [URL], "prompt": "x"},
                                    "options": {"quality": "low"}})
    two = parse_request({"tool": "editor",
                                    "input": {"images": [URL, URL], "prompt": "x"},
                                    "options": {"quality": "low"}})
    main = photo(96, 80)
    alone = run(runner, one, **{"input.images[0]": main})[0]
    with_ref = run(runner, two, **{"input.images[0]": main,
                                   "input.images[1]": Image.new("RGB", (64, 64), (0, 0, 255))})[0]
    assert alone.size == with_ref.size == (96, 80)
    assert not np.array_equal(np.asarray(alone), np.asarray(with_ref))
    assert encode_image(run(runner, two)[0], "webp") == encode_image(run(runner, two)[0], "webp")


# ---- photographer -----------------------------------------------------------------------------
MODE_INPUTS = {
    "person_placement": {"secondary_images": [URL]},
    "angle_change": {"angle": "high angle, front-right"},
    "cloth_change": {"text_prompt": "navy suit", "secondary_images": [URL]},
    "time_change": {"time": "Golden Hour", "season": "Autumn", "weather": "Foggy"},
    "location_change": {"text_prompt": "a courtroom"},
    "carousel": {"text_prompt": "fashion carousel"},
    "object_placement": {"text_prompt": "a green vase on the left"},
    "erase_edit": {"mask_image": URL},
}


@pytest.mark.parametrize("mode", [m for m in TASKS.modes("photographer") if m != "carousel"])
def test_every_photographer_mode(runner, mode):
    request = photographer(mode, **MODE_INPUTS[mode])
    seen: list[float] = []
    outputs = runner.run(request, images_for(request), RunContext(seed=3, progress=seen.append))
    assert len(outputs) == TASKS.for_request(request).output_count(request) == 1
    assert all(image.size == (96, 80) and image.mode == "RGB" for image in outputs)
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen[0] <= 0.2
    # The mode changed the picture.
    assert not np.array_equal(np.asarray(outputs[0]), np.asarray(photo()))


def test_named_aspect_ratio_gives_the_seed_size(runner):
    (image,) = run(runner, photographer("time_change", aspect="4:5"))
    assert image.size == (1536, 1920)


def test_erase_keeps_every_unmasked_pixel_bit_exact(runner):
    source, mask = photo(), mask_image(box=(20, 10, 50, 40))
    for text in ("", "a potted plant"):
        request = photographer("erase_edit", mask_image=URL, text_prompt=text)
        (out,) = run(runner, request, **{"input.main_image": source, "input.mask_image": mask})
        out_px, src_px = np.asarray(out), np.asarray(source)
        inside = np.asarray(mask) >= 128
        assert out.size == source.size
        assert np.array_equal(out_px[~inside], src_px[~inside])
        assert not np.array_equal(out_px[inside], src_px[inside])


def test_erase_rejects_missing_and_empty_masks(runner):
    with pytest.raises(InvalidInput) as exc:
        photographer("erase_edit")
    assert exc.value.field == "input.mask_image"
    request = photographer("erase_edit", mask_image=URL)
    with pytest.raises(InvalidInput) as exc:
        run(runner, request, **{"input.mask_image": Image.new("L", (96, 80), 0)})
    assert exc.value.field == "input.mask_image"


def test_object_placement_changes_only_its_box(runner):
    from retouch.pipelines.placement import box_mask, object_box, object_region

    request = photographer("object_placement", text_prompt="a lamp on the right")
    (out,) = run(runner, request)
    # The box comes from the scene's depth (surfaces; tested in test_placement_geometry).
    region = object_region(runner.store, photo(), "a lamp on the right")
    assert 0.02 < region.mean() < 0.5
    assert np.array_equal(np.asarray(out)[~region], np.asarray(photo())[~region])
    # Off-surface words keep the word box.
    assert np.array_equal(object_region(runner.store, photo(), "a lamp on the right wall"),
                          box_mask((96, 80), object_box("a lamp on the right wall")))


def test_angle_values_validated_and_front_view_is_the_source(runner):
    for angle in ANGLES:
        assert photographer("angle_change", angle=angle).input.angle == angle
    for bad in ("eye level, left", "Eye level, left side", "eye level,left side"):
        with pytest.raises(InvalidInput) as exc:
            photographer("angle_change", angle=bad)
        assert exc.value.field == "input.angle"
    with pytest.raises(InvalidInput) as exc:
        photographer("angle_change")
    assert exc.value.field == "input.angle"
    (front,) = run(runner, photographer("angle_change", angle="eye level, front"))
    assert np.array_equal(np.asarray(front), np.asarray(photo()))
    (rear,) = run(runner, photographer("angle_change", angle="worm's eye view, rear"))
    assert rear.size == (96, 80) and not np.array_equal(np.asarray(rear), np.asarray(photo()))


@pytest.mark.parametrize("field, value", [("time", "Midnight"), ("season", "spring"),
                                          ("weather", "Stormy")])
def test_atmosphere_values_must_match_exactly(field, value):
    with pytest.raises(InvalidInput) as exc:
        photographer("time_change", **{field: value})
    assert exc.value.field == f"input.{field}"
    assert {"Bright Day", "Dusk"} <= set(TIMES) and "Winter" in SEASONS and "Snowy" in WEATHERS


def test_carousel_frames_differ_and_record_their_plan(runner):
    request = photographer("carousel", **MODE_INPUTS["carousel"])
    seen: list[float] = []
    outputs = runner.run(request, images_for(request), RunContext(seed=3, progress=seen.append))
    spec = TASKS.for_request(request)
    assert len(outputs) == spec.output_count(request) == 10 and spec.slots == 2
    assert all(image.size == (96, 80) and image.mode == "RGB" for image in outputs)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 10
    assert len({encode_image(image, "png") for image in outputs}) == 10
    assert [image.info["frame"] for image in outputs] == list(range(1, 11))
    assert all(image.info["shot_source"] in ("planner", "fallback") for image in outputs)
    # The tiny planner's fallback set: camera angles, atmospheres and reframes.
    assert {image.info["pipeline"] for image in outputs} == {"angle", "atmosphere", "reframe"}


# ---- filters and upscaler -----------------------------------------------------------------------
@pytest.mark.parametrize("filter_id", AI_FILTERS)
def test_every_ai_filter(runner, filter_id):
    request = parse_request({"tool": "ai_filter",
                                        "input": {"image": URL, "filter": filter_id},
                                        "options": {"quality": "low"}})
    (out,) = run(runner, request)
    pixels = np.asarray(out).astype(int)
    assert out.size == (96, 80) and out.mode == "RGB"
    is_grey = np.array_equal(pixels[..., 0], pixels[..., 1]) and \
        np.array_equal(pixels[..., 1], pixels[..., 2])
    assert is_grey == (filter_id == "noir-bw")
    if filter_id == "polaroid":
        assert (pixels[-5:, :] == (246, 244, 238)).all() and (pixels[:, :2] == (246, 244, 238)).all()


def test_upscaler_is_dispatched(runner):
    request = parse_request({"tool": "upscaler", "input": {"image": URL},
                                        "options": {"scale": 2}})
    (out,) = run(runner, request, **{"input.image": photo(48, 40)})
    assert out.size == (96, 80)


# ---- runner contract --------------------------------------------------------------------------
def test_missing_image_is_named(runner):
    request = photographer("time_change")
    with pytest.raises(InvalidInput) as exc:
        runner.run(request, {}, RunContext(seed=1))
    assert exc.value.field == "input.main_image"


def test_cancel_stops_the_run(runner):
    request = photographer("carousel")
    seen: list[float] = []
    ctx = RunContext(seed=1, progress=seen.append, is_cancelled=lambda: len(seen) >= 3)
    with pytest.raises(Cancelled):
        runner.run(request, images_for(request), ctx)
    assert max(seen) < 0.5


def test_erase_with_a_named_aspect_ratio_keeps_the_fitted_source(runner):
    from retouch.pipelines.erase import mask_from_image
    from retouch.pipelines.sizes import fit_mask_to_size, fit_to_size

    source, mask = photo(), mask_image(box=(40, 20, 56, 60))
    request = photographer("erase_edit", mask_image=URL, aspect="1:1")
    (out,) = run(runner, request, **{"input.main_image": source, "input.mask_image": mask})
    assert out.size == (1536, 1536)
    inside = mask_from_image(fit_mask_to_size(mask, out.size))
    expected = np.asarray(fit_to_size(source, out.size))
    assert np.array_equal(np.asarray(out)[~inside], expected[~inside])


@pytest.mark.parametrize("mode", ["angle_change", "cloth_change"])
def test_photographer_is_deterministic_per_seed(runner, mode):
    request = photographer(mode, **MODE_INPUTS[mode])
    first, again, other = (encode_image(run(runner, request, seed=s)[0], "png") for s in (5, 5, 6))
    assert first == again and first != other


def test_editor_named_aspect_ratio(runner):
    request = parse_request({"tool": "editor", "input": {"images": [URL]},
                                        "options": {"quality": "low", "aspect_ratio": "9:16"}})
    assert run(runner, request)[0].size == (1440, 2560)


def test_cancel_during_shot_planning(runner):
    request = photographer("carousel")
    calls = {"n": 0}

    def cancelled_after_a_few_checks() -> bool:
        calls["n"] += 1
        return calls["n"] > 2  # runner + first planner step pass, then the flag turns true

    with pytest.raises(Cancelled):
        runner.run(request, images_for(request),
                   RunContext(seed=1, is_cancelled=cancelled_after_a_few_checks))
    assert calls["n"] <= 5
