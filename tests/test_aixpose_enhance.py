"""AIXpose enhancement recipes on the tiny engine: instruction checks, composition into one pass,
output sizes, bit-exact paste-back of region passes, determinism, pricing and job-body parsing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines.actions import (ACTIONS, ACTIONS_BY_ID, GROUPS_BY_ID, check_instruction,
                                       enhancement_size)
from retouch.pipelines.common import RunContext
from retouch.pipelines.actions import REGIONS
from retouch.pipelines.enhance import compose_actions
from retouch.pipelines.errors import PipelineInputError
from retouch.serving.core.errors import InvalidInput
from retouch.serving.tasks import TASKS, parse_request, price
from retouch.pipelines.sizes import fit_to_size


def body(actions, prompt=None, **options):
    opts = {"actions": actions, "resolution": "1K", "quality": "low", **options}
    if prompt:
        opts["prompt"] = prompt
    return {"tool": "enhance", "input": {"image": {"upload_id": "u1"}}, "options": opts}


def gradient(width=72, height=48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                          np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 90.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.mark.parametrize("actions, scene, field, words", [
    (["interior-style-nope"], None, "i.actions[0]", "unknown action"),
    (["renovation-floor", "renovation-floor"], None, "i.actions[1]", "twice"),
    (["interior-style-japandi", "interior-style-modern"], None, "i.actions[1]", "exclusive"),
    (["exterior-twilight"], "interior", "i.actions[0]", "fits exterior"),
    ([], None, "i.actions", "at least one"),
])
def test_instruction_errors_name_the_action(actions, scene, field, words):
    with pytest.raises(PipelineInputError) as raised:
        check_instruction(actions, None, "i", scene_type=scene)
    assert raised.value.field == field and words in raised.value.message


def test_every_action_is_a_complete_recipe():
    assert len(ACTIONS_BY_ID) == len(ACTIONS)
    for action in ACTIONS:
        assert action.group in GROUPS_BY_ID and action.credits > 0
        assert 0.2 <= action.strength <= 1.0 and action.prompt
        assert action.region in REGIONS


def test_actions_compose_into_one_pass():
    staged = compose_actions([ACTIONS_BY_ID["interior-style-japandi"],
                              ACTIONS_BY_ID["interior-decoration-medium"]], None)
    assert not staged.whole_frame and staged.regions == ("interior", "floor")
    assert staged.keep_layout and staged.strength == 0.75
    assert "japandi" in staged.prompt and "sofa" in staged.prompt
    outdoor = compose_actions([ACTIONS_BY_ID["exterior-sky-blue"],
                               ACTIONS_BY_ID["exterior-lawn"]], "tidy hedges")
    assert not outdoor.whole_frame and outdoor.regions == ("sky", "ground")
    assert outdoor.strength == 0.95 and outdoor.prompt.endswith("Additional instruction: tidy "
                                                                "hedges")
    assert compose_actions([], "brighter").whole_frame


def test_output_sizes_follow_ratio_and_resolution():
    assert enhancement_size("16:9", "2K", (96, 64)) == (2048, 1152)
    assert enhancement_size("original", "1K", (96, 64)) == (1024, 682)
    assert enhancement_size("4:5", "4K", (96, 64)) == (3276, 4096)


def test_enhance_jobs_parse_as_jobs_only_and_are_priced_from_the_catalog():
    request = parse_request(body(["interior-style-japandi", "interior-decoration-medium"],
                                 variants=2), surface=None)
    assert TASKS.for_request(request).output_count(request) == 2
    assert request.image_fields()["input.image"].value == "u1"
    assert price(request) == 2 * (40 + 40)
    assert price(parse_request(body([], prompt="warmer"), surface=None)) == 40
    with pytest.raises(InvalidInput) as raised:
        parse_request(body(["renovation-floor"]))  # not a Wixma tool
    assert raised.value.details["field"] == "tool"
    with pytest.raises(InvalidInput) as raised:
        parse_request(body(["renovation-floor"], variants=5), surface=None)
    assert raised.value.details["field"] == "options.variants"


def test_region_pass_repaints_the_floor_and_keeps_the_rest_bit_exact(tiny_store):
    from retouch.serving.runner import TaskRunner

    source = gradient()
    request = parse_request(body(["renovation-floor"], variants=2, aspect_ratio="3:2"),
                            surface=None)
    reported = []
    outputs = TaskRunner(tiny_store).run(request, {"input.image": source},
                                         RunContext(seed=5, progress=reported.append))
    size = enhancement_size("3:2", "1K", source.size)
    assert [o.size for o in outputs] == [size, size] and reported[-1] == 1.0
    base = fit_to_size(source, size)
    fitted = np.asarray(base)
    from retouch.pipelines.enhance import enhancement_alpha

    alpha = enhancement_alpha(tiny_store, base, ["floor"])
    for output in outputs:
        pixels = np.asarray(output)
        assert np.array_equal(pixels[alpha == 0], fitted[alpha == 0])  # outside: untouched
        assert not np.array_equal(pixels[alpha == 1], fitted[alpha == 1])  # repainted
    assert not np.array_equal(np.asarray(outputs[0]), np.asarray(outputs[1]))  # seed + i
    again = TaskRunner(tiny_store).run(request, {"input.image": source}, RunContext(seed=5))
    assert np.array_equal(np.asarray(again[0]), np.asarray(outputs[0]))


def test_whole_frame_pass_changes_the_frame_deterministically(tiny_store):
    from retouch.serving.runner import TaskRunner

    source = gradient()
    request = parse_request(body(["light-bright-natural", "interior-decoration-light"],
                                 aspect_ratio="1:1"), surface=None)
    first = TaskRunner(tiny_store).run(request, {"input.image": source}, RunContext(seed=9))
    second = TaskRunner(tiny_store).run(request, {"input.image": source}, RunContext(seed=9))
    assert len(first) == 1 and first[0].size == (1024, 1024)
    assert np.array_equal(np.asarray(first[0]), np.asarray(second[0]))
    fitted = np.asarray(fit_to_size(source, (1024, 1024)), dtype=np.int16)
    assert np.abs(np.asarray(first[0], dtype=np.int16) - fitted)[:200].mean() > 1.0


@pytest.mark.parametrize("region", ["floor", "walls", "ground", "furnishings", "sky", "people"])
def test_region_alphas_are_non_empty_with_the_tiny_segmenter(tiny_store, region):
    from retouch.pipelines.enhance import enhancement_alpha

    alpha = enhancement_alpha(tiny_store, gradient(64, 48), [region])
    assert alpha.shape == (48, 64) and alpha.dtype == np.float32 and (alpha == 1).any()
