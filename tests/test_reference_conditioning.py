"""Reference images condition the editor and the placement modes through the IP-Adapter (tiny
twin, CPU): they reach the CLIP image encoder, change the result, keep it deterministic, and
leave the shared UNet as it was."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines import placement, prompts
from retouch.pipelines.common import RunContext
from retouch.serving.runner import TaskRunner
from retouch.pipelines.erase import INPAINT_STRENGTH, inpaint_region
from retouch.pipelines.images import encode_image
from retouch.serving.tasks import parse_request

URL = "https://example.com/image.png"
SIZE = (64, 64)


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], -1) + rng.integers(0, 30, (*SIZE[::-1], 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def flat(colour) -> Image.Image:
    return Image.new("RGB", (48, 40), colour)


RED, GREEN, BLUE = flat((220, 30, 30)), flat((30, 200, 40)), flat((30, 30, 220))


@pytest.fixture
def encoded_batches(tiny_store):
    """Batch sizes the IP-Adapter's CLIP image encoder sees during the test."""
    encoder, _ = tiny_store.image_encoder()
    seen: list[int] = []
    handle = encoder.register_forward_hook(lambda module, args, kwargs, output: seen.append(
        int((args[0] if args else kwargs["pixel_values"]).shape[0])), with_kwargs=True)
    yield seen
    handle.remove()


def assert_adapter_unloaded(store) -> None:
    for pipe in (store.img2img(), store.inpaint()):
        assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
        assert not any("IPAdapter" in type(p).__name__ for p in pipe.unet.attn_processors.values())


def png(image: Image.Image) -> bytes:
    return encode_image(image, "png")


# ---- editor -------------------------------------------------------------------------------------
def edit(store, main, *references, seed=7) -> Image.Image:
    request = parse_request({
        "tool": "editor", "input": {"images": [URL] * (1 + len(references)), "prompt": "a jacket"},
        "options": {"quality": "low"}})
    images = {f"input.images[{i}]": image for i, image in enumerate((main, *references))}
    (out,) = TaskRunner(store).run(request, images, RunContext(seed=seed))
    return out


def test_editor_references_go_through_the_adapter(tiny_store, encoded_batches):
    main = photo(1)
    alone = png(edit(tiny_store, main))
    assert encoded_batches == []  # no references: the adapter is never loaded

    red_blue = edit(tiny_store, main, RED, BLUE)
    red_green = edit(tiny_store, main, RED, GREEN)
    assert encoded_batches == [2, 2]  # both references reached the image encoder, every call
    assert red_blue.size == red_green.size == SIZE
    # Same seed, same main image: only the second reference differs, and the output follows it.
    assert np.abs(np.asarray(red_blue, float) - np.asarray(red_green, float)).mean() > 0.5
    assert png(edit(tiny_store, main, RED, BLUE)) == png(red_blue)  # deterministic
    assert png(red_blue) != alone

    assert_adapter_unloaded(tiny_store)
    assert png(edit(tiny_store, main)) == alone  # plain img2img is unchanged afterwards


# ---- placement modes ----------------------------------------------------------------------------
MODE_INPUTS = {
    "person_placement": {},
    "cloth_change": {"text_prompt": "a linen shirt"},
    "location_change": {"text_prompt": "a beach"},
    "object_placement": {"text_prompt": "a vase on the left"},
}


def place(store, mode, *references, seed=5) -> Image.Image:
    body = {"main_image": URL, "secondary_images": [URL] * len(references), **MODE_INPUTS[mode]}
    request = parse_request({"tool": "photographer", "input": body,
                                        "options": {"mode": mode, "quality": "low"}})
    images = {"input.main_image": photo(2)}
    images.update({f"input.secondary_images[{i}]": ref for i, ref in enumerate(references)})
    (out,) = TaskRunner(store).run(request, images, RunContext(seed=seed))
    return out


@pytest.mark.parametrize("mode", list(MODE_INPUTS))
def test_placement_secondary_images_go_through_the_adapter(tiny_store, encoded_batches, mode):
    # The paste / cut-out uses only the first reference, so a change of the second one can only
    # reach the output through the adapter.
    red_blue = place(tiny_store, mode, RED, BLUE)
    red_green = place(tiny_store, mode, RED, GREEN)
    assert encoded_batches == [2, 2]
    assert red_blue.size == red_green.size == SIZE
    assert not np.array_equal(np.asarray(red_blue), np.asarray(red_green))
    assert_adapter_unloaded(tiny_store)


def test_placement_is_deterministic_and_without_references_is_the_plain_inpaint(
        tiny_store, encoded_batches):
    first = place(tiny_store, "object_placement", RED, BLUE)
    assert png(place(tiny_store, "object_placement", RED, BLUE)) == png(first)
    assert encoded_batches == [2, 2]

    plain = place(tiny_store, "object_placement")
    assert encoded_batches == [2, 2]  # no references: no adapter call
    text = MODE_INPUTS["object_placement"]["text_prompt"]
    base = photo(2)
    region = placement.object_region(tiny_store, base, text)  # the depth-chosen box
    expected = inpaint_region(tiny_store, RunContext(seed=5), base, region,
                              prompts.object_placement_prompt(text), prompts.NEGATIVE_PROMPT,
                              tiny_store.quality_steps["low"], strength=INPAINT_STRENGTH)
    assert png(plain) == png(expected)
    assert_adapter_unloaded(tiny_store)
