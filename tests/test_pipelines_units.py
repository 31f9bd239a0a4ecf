"""Small pieces of the model-backed pipelines: prompt chunking, masks, paste-back, grades, plans."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines import prompts
from retouch.pipelines.common import CHUNK_TOKENS, encode_long_prompt, prompt_chunks
from retouch.pipelines.erase import mask_from_image, paste_back
from retouch.pipelines.filters import apply_grade, polaroid_frame
from retouch.pipelines.placement import object_box


def test_long_prompts_are_chunked_without_losing_the_client_instruction(tiny_store):
    pipe = tiny_store.text2img()
    text = prompts.atmosphere_prompt("Neon Night", "Winter", "Rainy", "keep the red umbrella")
    chunks = prompt_chunks(pipe.tokenizer, text)
    assert len(chunks) >= 2
    assert all(len(pipe.tokenizer(c, add_special_tokens=False)["input_ids"]) <= CHUNK_TOKENS
               for c in chunks)
    joined = " ".join(chunks)
    assert "keep the red umbrella" in joined and "wet reflective surfaces" in joined
    embeddings = encode_long_prompt(pipe, text, prompts.NEGATIVE_PROMPT)
    assert embeddings["prompt_embeds"].shape == embeddings["negative_prompt_embeds"].shape
    assert embeddings["prompt_embeds"].shape[1] == 77 * len(chunks)
    assert encode_long_prompt(pipe, "a cat", "blurry") is None  # short prompts go as text


def test_mask_convention_white_or_transparent_means_replace():
    grey = Image.new("L", (8, 8), 0)
    grey.paste(255, (0, 0, 4, 8))
    assert mask_from_image(grey)[:, :4].all() and not mask_from_image(grey)[:, 4:].any()
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (4, 0, 8, 8))
    assert mask_from_image(rgba)[:, 4:].all() and not mask_from_image(rgba)[:, :4].any()


def test_paste_back_is_exact_outside_the_mask():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    out = np.asarray(paste_back(source, generated, mask))
    assert np.array_equal(out[~mask], np.asarray(source)[~mask])
    assert np.array_equal(out[mask], np.asarray(generated)[mask])
    with pytest.raises(ValueError):
        paste_back(source, generated.resize((6, 5)), mask)


@pytest.mark.parametrize("text, centre", [("a vase on the left", (0.22, 0.7)),
                                          ("a clock on the wall, right", (0.78, 0.25)),
                                          ("a ball in the middle", (0.5, 0.5)),
                                          ("a cat", (0.5, 0.7))])
def test_object_box_follows_placement_words(text, centre):
    left, top, right, bottom = object_box(text)
    assert (left + right) / 2 == pytest.approx(centre[0]) and 0 <= left < right <= 1
    assert (top + bottom) / 2 == pytest.approx(centre[1]) and 0 <= top < bottom <= 1


def test_grades_are_deterministic_and_distinct():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    graded = {name: np.asarray(apply_grade(image, recipe)).astype(int)
              for name, recipe in prompts.FILTER_RECIPES.items()}
    assert np.array_equal(graded["noir-bw"], np.asarray(
        apply_grade(image, prompts.FILTER_RECIPES["noir-bw"])).astype(int))
    noir = graded["noir-bw"]
    assert (noir[..., 0] == noir[..., 1]).all() and (noir[..., 1] == noir[..., 2]).all()
    golden, blue = graded["golden-backlight"], graded["blue-hour"]
    assert golden[..., 0].mean() - golden[..., 2].mean() > blue[..., 0].mean() - blue[..., 2].mean()
    framed = np.asarray(polaroid_frame(image))
    assert framed.shape == (40, 50, 3) and (framed[-6:] == (246, 244, 238)).all()


def test_person_placement_stands_the_cut_out_person_in_the_scene(monkeypatch):
    """Compositing logic with a stand-in matter and the inpaint step captured, not run."""
    from types import SimpleNamespace

    from retouch.pipelines import placement
    from retouch.pipelines.common import RunContext
    from retouch.serving.tasks import parse_request

    def matter(image):  # the person is the magenta block of the reference
        rgb = np.asarray(image).astype(int)
        return ((rgb[..., 0] > 200) & (rgb[..., 1] < 60)).astype(np.float32)

    def floor_depth(image):
        """Relative inverse depth of a level floor (horizon at 40 % of the height), wall above."""
        h, w = image.height, image.width
        rows = np.arange(h, dtype=np.float32)[:, None] - 0.4 * h
        return np.broadcast_to(np.maximum(rows, 0.5), (h, w)).astype(np.float32).copy()

    store = SimpleNamespace(native_size=64, matter=lambda: matter,
                            depth_estimator=lambda: floor_depth, quality_steps={"low": 2})
    captured = {}

    def fake_inpaint(store, ctx, base, mask, prompt, negative, steps, **kwargs):
        captured.update(base=np.asarray(base), mask=mask, strength=kwargs["strength"])
        return base

    monkeypatch.setattr(placement, "inpaint_region", fake_inpaint)
    scene = Image.new("RGB", (100, 80), (0, 90, 0))
    reference = Image.new("RGB", (64, 64), (0, 0, 255))  # the matter's working size
    reference.paste((255, 0, 255), (20, 10, 40, 50))  # a 20x40 "person"
    request = parse_request({
        "tool": "photographer", "input": {"main_image": "https://e.x/a.png",
                                          "secondary_images": ["https://e.x/b.png"]},
        "options": {"mode": "person_placement", "quality": "low"}})
    placement.person_placement(store, request, {"input.main_image": scene,
                                                "input.secondary_images[0]": reference},
                               RunContext(seed=1))
    magenta = (captured["base"][..., 0] > 200) & (captured["base"][..., 2] > 200)
    rows, cols = np.nonzero(magenta)
    # Stood where the scene's floor decides (ground.py is tested on its own): the box's height
    # and foot row, centred (no placement words), feet below the horizon (row 32).
    box, decided = placement.person_layout(store, scene, "", 20 / 40)
    assert decided is not None and decided.plane.fitted
    assert rows.max() + 1 == box[3] > 0.4 * 80 and rows.max() - rows.min() + 1 == box[3] - box[1]
    assert abs((cols.min() + cols.max()) / 2 - 49.5) <= 3
    near, _ = placement.person_layout(store, scene, "near the camera", 20 / 40)
    assert near[3] > box[3] and near[3] - near[1] > box[3] - box[1]  # nearer: lower and taller
    # The contact band under the feet is repainted too (shadow, floor contact).
    assert captured["mask"][box[3]:box[3] + 2, cols.min():cols.max()].all()
    assert not (captured["base"][..., 2] > 200)[~magenta].any()  # the reference's blue stays out
    assert captured["mask"][magenta].all() and captured["mask"].mean() < 0.35
    assert captured["strength"] == placement.HARMONISE_STRENGTH
