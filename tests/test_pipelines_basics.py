"""Model-free pipeline pieces: image decoding/encoding, sizes, prompts, progress and cancel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines import prompts, sizes
from retouch.pipelines.common import RunContext, steps_for_strength
from retouch.pipelines.errors import Cancelled, PipelineInputError
from retouch.pipelines.images import decode_image, encode_image, media_type
from retouch.pipelines.vocabulary import (AI_FILTERS, ANGLES, ASPECT_RATIOS, SEASONS, TIMES,
                                          WEATHERS)


def _gradient(width=40, height=24) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_accepts_real_images(fmt):
    image = decode_image(_bytes(_gradient(), fmt), "input.image")
    assert image.mode == "RGB" and image.size == (40, 24)


def test_decode_flattens_alpha_and_applies_exif_orientation():
    rgba = Image.new("RGBA", (20, 30), (10, 20, 30, 0))
    assert decode_image(_bytes(rgba, "PNG"), "f").getpixel((0, 0)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated = decode_image(_bytes(_gradient(40, 24), "JPEG", exif=exif), "f")
    assert rotated.size == (24, 40)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"GIF89a" + b"\0" * 40, "not a PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "could not decode"),
])
def test_decode_rejects_bad_bytes_naming_the_field(data, reason):
    with pytest.raises(PipelineInputError) as exc:
        decode_image(data, "input.main_image")
    assert exc.value.field == "input.main_image" and reason in exc.value.message


def test_decode_rejects_truncated_and_tiny_images():
    good = _bytes(_gradient(200, 100), "PNG")
    with pytest.raises(PipelineInputError, match="input.images\\[1\\]"):
        decode_image(good[: len(good) // 2], "input.images[1]")
    with pytest.raises(PipelineInputError, match="each side"):
        decode_image(_bytes(_gradient(8, 8), "PNG"), "input.image")


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_encode_is_deterministic_and_round_trips(fmt):
    image = _gradient()
    first, second = encode_image(image, fmt), encode_image(image.copy(), fmt)
    assert first == second
    decoded = decode_image(first, "out")
    assert decoded.size == image.size
    if fmt == "png":
        assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert media_type(fmt) == {"png": "image/png", "webp": "image/webp",
                               "jpeg": "image/jpeg"}[fmt]


def test_encode_keeps_alpha_for_png_only():
    rgba = Image.new("RGBA", (16, 16), (200, 0, 0, 0))
    assert Image.open(io.BytesIO(encode_image(rgba, "png"))).mode == "RGBA"
    assert Image.open(io.BytesIO(encode_image(rgba, "jpeg"))).mode == "RGB"


@pytest.mark.parametrize("ratio", [r for r in ASPECT_RATIOS if r != "original"])
def test_output_and_working_sizes(ratio):
    size = sizes.output_size(ratio, native_size=1024, source_size=(640, 480))
    assert size == ASPECT_RATIOS[ratio]
    work = sizes.working_size(size, native_size=1024, multiple=64)
    assert work[0] % 64 == 0 and work[1] % 64 == 0
    assert 0.8 < work[0] * work[1] / 1024**2 < 1.25
    assert abs(work[0] / work[1] - size[0] / size[1]) / (size[0] / size[1]) < 0.12


def test_original_size_rules():
    assert sizes.output_size("original", native_size=1024) == (1024, 1024)
    assert sizes.output_size("original", native_size=64, source_size=(300, 200)) == (300, 200)
    assert sizes.output_size("original", native_size=64, source_size=(5120, 2000)) == (2560, 1000)


def test_fit_to_size_crops_centre_without_distortion():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # red centre square
    fitted = sizes.fit_to_size(image, (50, 50))
    assert fitted.size == (50, 50)
    assert np.asarray(fitted)[..., 0].min() > 240


def test_prompts_cover_every_value_and_keep_seed_strings_verbatim():
    assert set(prompts.ANGLE_PROMPTS) == set(ANGLES) and len(set(prompts.ANGLE_PROMPTS.values())) == 40
    for time in TIMES:
        for season in SEASONS:
            for weather in WEATHERS:
                text = prompts.atmosphere_prompt(time, season, weather, "keep the dog")
                assert SEASONS[season] in text and WEATHERS[weather] in text
                assert text.endswith("Additional instruction: keep the dog")
    assert set(prompts.FILTER_RECIPES) == set(AI_FILTERS)


def test_text_prompt_is_appended_never_replacing():
    assert prompts.with_instruction("backend", "") == "backend"
    combined = prompts.angle_prompt("eye level, left side", "keep expression")
    assert combined.startswith(prompts.ANGLE_PROMPTS["eye level, left side"])
    assert "keep expression" in combined
    erase, _ = prompts.erase_prompt("")
    fill, _ = prompts.erase_prompt("a red vase")
    assert erase == prompts.ERASE and "a red vase" in fill


def test_progress_is_monotonic_and_cancel_raises():
    seen = []
    flag = {"cancel": False}
    ctx = RunContext(seed=1, progress=seen.append, is_cancelled=lambda: flag["cancel"])
    ctx.report(0.5)
    ctx.report(0.2)
    callback = ctx.step_callback(0.5, 1.0, total_steps=2)
    callback(None, 0, 999, {})
    callback(None, 1, 998, {})
    assert seen == [0.5, 0.75, 1.0]
    flag["cancel"] = True
    with pytest.raises(Cancelled):
        callback(None, 1, 998, {})
    assert steps_for_strength(2, 0.3) == 7 and int(7 * 0.3) == 2
    a, b = ctx.generator(), ctx.generator()
    assert torch_equal(a, b)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
