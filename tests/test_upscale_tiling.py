"""Upscaler speed paths on CPU: several tiles per forward pass, half-precision copies, the DNI
cache, and tiled output within PSNR 45 dB of untiled output (tiny twins and the full-size
general-x4v3 architecture with random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.models.realesrgan_arch import build_network
from retouch.pipelines.common import RunContext
from retouch.pipelines.upscale import (DEFAULT_TILE_OVERLAP, DNI_CACHE_SIZE, denoise_network,
                                       inference_network, run_tiled, tile_boxes, tile_passes,
                                       upscale)


def sample_image(width: int = 56, height: int = 44, seed: int = 0) -> np.ndarray:
    """Gradients, a hard-edged block, a thin line and grain: edges and texture cross the seams."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 230 / width, y * 230 / height, (x + y) * 115 / (width + height)], -1)
    rgb[height // 4: height // 2, width // 3: 2 * width // 3] = (240, 200, 40)
    rgb[:, width // 2] = (20, 20, 20)
    rgb = rgb + rng.normal(0, 8, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    mse = np.mean((np.asarray(first, np.float64) - np.asarray(second, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def he_initialised_general_x4v3(seed: int = 1) -> torch.nn.Module:
    """realesr-general-x4v3 at full size (64 features, 32 convs) with He-normal random weights:
    unlike PyTorch's default init, every conv passes its signal on, so the output depends on
    pixels far away (33 px each side) and tile seams would show."""
    network = build_network("SRVGGNetCompact", num_in_ch=3, num_out_ch=3, num_feat=64,
                            num_conv=32, upscale=4, act_type="prelu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                module.bias.zero_()
    return network.eval()


def test_passes_batch_same_shaped_windows_and_cover_every_tile():
    boxes = tile_boxes(100, 80, 16)
    passes = tile_passes(boxes, 8, 100, 80, batch=4)
    assert sorted(box for tiles in passes for box, _ in tiles) == sorted(boxes)
    for tiles in passes:
        assert 1 <= len(tiles) <= 4
        shapes = {(bottom - top, right - left) for _, (left, top, right, bottom) in tiles}
        assert len(shapes) == 1
    assert len(passes) < len(boxes)
    assert [len(tiles) for tiles in tile_passes(boxes, 8, 100, 80, batch=1)] == [1] * len(boxes)


@pytest.mark.parametrize("scale", [2, 4])
def test_batched_tiles_equal_one_tile_per_pass(tiny_store, scale):
    source = Image.fromarray(sample_image())
    single = upscale(tiny_store, source, scale, 0.2, tile_size=16, tile_batch=1)
    batched = upscale(tiny_store, source, scale, 0.2, tile_size=16, tile_batch=8)
    difference = np.abs(np.asarray(single, int) - np.asarray(batched, int))
    assert difference.max() <= 1


@pytest.mark.parametrize("scale", [2, 4])
def test_tiny_twins_tiled_within_45_db_of_untiled(tiny_store, scale):
    source = Image.fromarray(sample_image())
    whole = upscale(tiny_store, source, scale, 0.1, tile_size=512)
    tiled = upscale(tiny_store, source, scale, 0.1, tile_size=16, tile_batch=4)
    assert psnr(np.asarray(tiled), np.asarray(whole)) >= 45


def test_full_size_general_x4v3_tiled_within_45_db_of_untiled():
    network = he_initialised_general_x4v3()
    pixels = sample_image(48, 40)
    ctx = RunContext(seed=0)
    whole = np.rint(run_tiled(network, pixels, 4, ctx, tile_size=512, tile_overlap=0))
    assert 20 < whole.std()  # the random network does not just saturate

    def tiled(overlap: int) -> np.ndarray:
        return np.rint(run_tiled(network, pixels, 4, ctx, tile_size=24, tile_overlap=overlap,
                                 batch=4))

    assert psnr(tiled(DEFAULT_TILE_OVERLAP), whole) >= 45
    assert psnr(tiled(4), whole) < 45  # too little context: the seams show, the metric sees them


def test_half_precision_copy_leaves_the_store_network_alone(tiny_store):
    network = tiny_store.upscaler("realesrgan_x2plus")
    assert inference_network(network, torch.float32) is network
    half = inference_network(network, torch.bfloat16, channels_last=True)
    assert half is not network and half is inference_network(network, torch.bfloat16,
                                                              channels_last=True)
    assert next(half.parameters()).dtype == torch.bfloat16
    assert next(network.parameters()).dtype == torch.float32
    pixels = sample_image(24, 20)
    full = run_tiled(network, pixels, 2, RunContext(seed=0), tile_size=16, tile_overlap=8)
    reduced = run_tiled(half, pixels, 2, RunContext(seed=0), tile_size=16, tile_overlap=8,
                        channels_last=True)
    assert psnr(np.rint(reduced), np.rint(full)) >= 30


def test_interpolated_networks_are_cached_per_strength(tiny_store):
    first = denoise_network(tiny_store, 0.2)
    assert denoise_network(tiny_store, 0.2) is first
    assert denoise_network(tiny_store, 0.6) is not first
    for index in range(DNI_CACHE_SIZE):
        denoise_network(tiny_store, 0.01 * (index + 1))
    assert denoise_network(tiny_store, 0.2) is not first  # the oldest strengths were dropped
    assert denoise_network(tiny_store, 1.0) is tiny_store.upscaler("realesr_general_x4v3")
