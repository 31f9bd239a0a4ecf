"""The upscaler pipeline on the tiny Real-ESRGAN twins: sizes, tiling, noise_scale, cancel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines.common import RunContext
from retouch.pipelines.errors import Cancelled, PipelineInputError
from retouch.pipelines.upscale import plan_upscale, upscale
from retouch.pipelines.vocabulary import UPSCALE_4K_HEIGHT


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with some noise: structure to keep, grain to denoise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (width + height)], -1)
    noisy = base + rng.normal(0, 12, base.shape) + 25
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("scale,size,expected", [
    (2, (13, 9), (26, 18)),
    (4, (13, 9), (52, 36)),
    ("4k", (48, 32), (3240, UPSCALE_4K_HEIGHT)),
    ("4k", (30, 40), (UPSCALE_4K_HEIGHT, 2880)),
])
def test_output_sizes_are_exact(tiny_store, scale, size, expected):
    out = upscale(tiny_store, _photo(*size), scale, 0.1, RunContext(seed=0))
    assert out.size == expected and out.mode == "RGB"


def test_4k_plan_picks_the_smallest_sufficient_network():
    assert plan_upscale((1500, 1200), "4k").model_factor == 2  # needs 1.8x
    assert plan_upscale((1500, 1200), "4k").output_size == (2700, 2160)
    assert plan_upscale((1000, 700), "4k").model_factor == 4
    already = plan_upscale((4000, 2250), "4k")
    assert already.model_factor == 1 and already.output_size == (3840, 2160)
    assert plan_upscale((1001, 333), "4k").output_size == (6493, 2160)


def test_large_source_at_4k_is_only_resized(tiny_store):
    source = Image.linear_gradient("L").resize((2400, 2200)).convert("RGB")
    out = upscale(tiny_store, source, "4k", 0.1)
    assert out.size == (2356, 2160)
    assert abs(np.asarray(out).mean() - np.asarray(source).mean()) < 1


def test_four_x_output_follows_the_source(tiny_store):
    source = _photo(24, 16)
    out = upscale(tiny_store, source, 4, 0.1)
    back = out.resize(source.size, Image.Resampling.BOX)
    assert np.abs(_pixels(back) - _pixels(source)).mean() < 12


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_equals_untiled(tiny_store, scale):
    source = _photo(41, 35)
    whole = upscale(tiny_store, source, scale, 0.2, tile_size=512)
    tiled = upscale(tiny_store, source, scale, 0.2, tile_size=16, tile_overlap=16)
    assert tiled.size == whole.size
    assert np.abs(_pixels(tiled) - _pixels(whole)).max() <= 1


@pytest.mark.parametrize("scale", [2, 4])
def test_noise_scale_changes_the_output_deterministically(tiny_store, scale):
    source = _photo(20, 20)
    low = upscale(tiny_store, source, scale, 0.0)
    high = upscale(tiny_store, source, scale, 0.5)
    again = upscale(tiny_store, source, scale, 0.0)
    assert np.array_equal(np.asarray(low), np.asarray(again))
    assert np.abs(_pixels(low) - _pixels(high)).mean() > 0.5


def test_alpha_and_grayscale_are_kept(tiny_store):
    rgba = _photo(10, 8).convert("RGBA")
    rgba.putalpha(Image.new("L", (10, 8), 128))
    out = upscale(tiny_store, rgba, 2, 0.1)
    assert out.mode == "RGBA" and out.size == (20, 16)
    assert np.asarray(out.getchannel("A")).min() == 128
    gray = upscale(tiny_store, _photo(10, 8).convert("L"), 4, 0.1)
    assert gray.mode == "L" and gray.size == (40, 32)


def test_progress_reaches_one_and_cancel_stops_between_tiles(tiny_store):
    seen: list[float] = []
    upscale(tiny_store, _photo(40, 40), 4, 0.1, RunContext(seed=0, progress=seen.append),
            tile_size=16)
    assert len(seen) >= 9 and seen == sorted(seen) and seen[-1] == 1.0

    reports: list[float] = []
    ctx = RunContext(seed=0, progress=reports.append, is_cancelled=lambda: len(reports) >= 2)
    with pytest.raises(Cancelled):
        upscale(tiny_store, _photo(40, 40), 4, 0.1, ctx, tile_size=16)
    assert len(reports) == 2  # 9 tiles, stopped after the second


@pytest.mark.parametrize("scale,noise,field", [
    (3, 0.1, "options.scale"), ("8k", 0.1, "options.scale"), (True, 0.1, "options.scale"),
    (2, 0.6, "options.noise_scale"), (2, -0.1, "options.noise_scale"),
    (2, float("nan"), "options.noise_scale"),
])
def test_invalid_options_name_the_field(tiny_store, scale, noise, field):
    with pytest.raises(PipelineInputError) as error:
        upscale(tiny_store, _photo(8, 8), scale, noise)
    assert error.value.field == field


def test_too_large_a_result_is_refused(tiny_store):
    with pytest.raises(PipelineInputError) as error:
        upscale(tiny_store, Image.new("RGB", (3000, 2100)), 4, 0.1)
    assert error.value.field == "input.image"
