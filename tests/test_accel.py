"""CUDA speed settings (`models.accel`), exercised on CPU with the tiny twins: what each setting
changes on a pipeline, that CPU pipelines are left as they are, and that results stay the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.models.accel import (AccelSettings, apply_cuda_defaults, apply_defaults,
                                  prepare_vae_for_size, upscaler_dtype, warm_up)
from retouch.pipelines.common import RunContext
from retouch.serving.runner import TaskRunner
from retouch.serving.tasks import parse_request

URL = "https://example.com/image.png"


@pytest.fixture
def fresh_store(tiny_cache_dir):
    """A store of its own: these tests change its pipelines' modules."""
    from retouch.models.store import ModelStore

    return ModelStore(profile="tiny", device="cpu", cache_dir=tiny_cache_dir,
                      accel=AccelSettings())


def processor_names(model) -> set[str]:
    return {type(p).__name__ for p in model.attn_processors.values()}


def generate(pipe, **kwargs) -> np.ndarray:
    image = pipe(prompt="a red chair", negative_prompt="blurry", width=64, height=64,
                 num_inference_steps=2, generator=torch.Generator().manual_seed(3),
                 output_type="np", **kwargs).images[0]
    return np.asarray(image, dtype=np.float64)


def test_settings_come_from_the_environment():
    settings = AccelSettings.from_env({"RETOUCH_CUDA_COMPILE": "1", "RETOUCH_CUDA_FUSE_QKV": "false",
                                       "RETOUCH_CUDA_VAE_TILING_PIXELS": "1000",
                                       "RETOUCH_CUDA_COMPILE_MODE": "reduce-overhead",
                                       "RETOUCH_CUDA_UPSCALER_BATCH": "8"})
    assert settings.compile and not settings.fuse_qkv and settings.channels_last
    assert settings.vae_tiling_pixels == 1000 and settings.compile_mode == "reduce-overhead"
    assert settings.upscaler_batch == 8
    assert AccelSettings.from_env({}) == AccelSettings()
    with pytest.raises(ValueError, match="RETOUCH_CUDA_COMPILE"):
        AccelSettings.from_env({"RETOUCH_CUDA_COMPILE": "sometimes"})


def test_cpu_pipelines_keep_diffusers_defaults(fresh_store):
    pipe = fresh_store.text2img()  # the store applied apply_cuda_defaults already
    before = processor_names(pipe.unet)
    apply_cuda_defaults(pipe, AccelSettings())
    assert processor_names(pipe.unet) == before and "FusedAttnProcessor2_0" not in before
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    prepare_vae_for_size(pipe, 8000, 8000)
    assert not pipe.vae.use_tiling
    assert upscaler_dtype("cpu") == torch.float32
    assert upscaler_dtype("cuda", AccelSettings(upscaler_dtype="bfloat16")) == torch.bfloat16
    assert upscaler_dtype("cuda", AccelSettings(enabled=False)) == torch.float32
    assert not AccelSettings.from_env({"RETOUCH_CUDA_ENABLED": "0"}).enabled


def test_fused_qkv_and_channels_last_keep_the_image(fresh_store):
    pipe = fresh_store.text2img()
    plain = generate(pipe)
    apply_defaults(pipe, AccelSettings())
    assert processor_names(pipe.unet) == {"FusedAttnProcessor2_0"}
    assert processor_names(pipe.vae) == {"FusedAttnProcessor2_0"}
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fused = generate(pipe)
    assert np.abs(fused - plain).max() < 1e-3
    # A sibling pipeline shares the modules: they are not fused a second time.
    sibling = fresh_store.img2img()
    assert sibling.unet is pipe.unet
    apply_defaults(sibling, AccelSettings())
    assert np.abs(generate(pipe) - plain).max() < 1e-3


def test_vae_tiles_from_the_configured_size(fresh_store):
    pipe = fresh_store.text2img()
    apply_defaults(pipe, AccelSettings(fuse_qkv=False, vae_tiling_pixels=3840 * 2160))
    prepare_vae_for_size(pipe, 1024, 1024)
    assert not pipe.vae.use_tiling
    prepare_vae_for_size(pipe, 3840, 2160)
    assert pipe.vae.use_tiling
    prepare_vae_for_size(pipe, 3000, 2000)
    assert not pipe.vae.use_tiling


def test_vae_upcast_follows_the_dtype(tiny_cache_dir):
    from retouch.models.store import ModelStore

    for dtype, upcast in ((torch.float32, True), (torch.bfloat16, False)):
        pipe = ModelStore(profile="tiny", device="cpu", cache_dir=tiny_cache_dir).text2img()
        pipe.vae.to(dtype)
        pipe.vae.register_to_config(force_upcast=True)
        apply_defaults(pipe, AccelSettings(fuse_qkv=False))
        # float32 (and float16) keep diffusers' upcast; bfloat16 cannot overflow: no upcast.
        assert pipe.vae.config.force_upcast == upcast


def test_compile_setting_compiles_unet_and_vae_decoder_and_warms_up(fresh_store):
    pipe = fresh_store.text2img()
    plain = generate(pipe)
    apply_defaults(pipe, AccelSettings(compile=True, compile_backend="eager", fuse_qkv=False))
    assert pipe.unet._compiled_call_impl is not None
    assert pipe.vae.decoder._compiled_call_impl is not None
    assert pipe.vae.encoder._compiled_call_impl is None
    warm_up(pipe, 64, 64, steps=1)
    assert np.abs(generate(pipe) - plain).max() < 1e-5


def test_reference_conditioning_works_on_fused_attention(fresh_store, tiny_store):
    """The IP-Adapter swaps the UNet's attention processors; on fused projections it still
    conditions the editor, with the same result as on diffusers' defaults."""
    apply_defaults(fresh_store.img2img(), AccelSettings())
    request = parse_request({"tool": "editor",
                                        "input": {"images": [URL, URL], "prompt": "x"},
                                        "options": {"quality": "low"}})
    main = Image.new("RGB", (64, 64), (120, 90, 60))
    reference = Image.new("RGB", (64, 64), (0, 0, 255))
    images = {"input.images[0]": main, "input.images[1]": reference}
    fused = TaskRunner(fresh_store).run(request, images, RunContext(seed=5))[0]
    default = TaskRunner(tiny_store).run(request, images, RunContext(seed=5))[0]
    difference = np.abs(np.asarray(fused, dtype=int) - np.asarray(default, dtype=int))
    assert difference.max() <= 2
