"""Model registry, tiny twins, the ModelStore accessors and the Real-ESRGAN architecture."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.models import realesrgan_arch
from retouch.models.fetch import fetch_plan
from retouch.models.registry import (SEGFORMER_CLOTHES_LABELS, UPSCALER_NAMES, resolve_profile)
from retouch.models.store import ModelStore
from retouch.models.tiny import BUILDER_VERSION, MARKER_NAME, build_tiny_models, tiny_root


def weights_digest(root: Path) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) of every weight file under root."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".pth"))
    assert files, f"no weight files under {root}"
    for path in files:
        tensors = (load_file(path) if path.suffix == ".safetensors"
                   else realesrgan_arch.read_state_dict(path))
        digest.update(str(path.relative_to(root)).encode())
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_tiny_builder_is_deterministic_and_idempotent(tiny_store, tmp_path):
    fresh = build_tiny_models(tmp_path)
    assert weights_digest(fresh) == weights_digest(tiny_root(tiny_store.cache_dir))
    assert (fresh / MARKER_NAME).read_text().strip() == BUILDER_VERSION

    unet_file = next(fresh.rglob("unet/*.safetensors"))
    before = unet_file.stat().st_mtime_ns
    assert build_tiny_models(tmp_path) == fresh
    assert unet_file.stat().st_mtime_ns == before  # not rebuilt

    size = sum(p.stat().st_size for p in fresh.rglob("*") if p.is_file())
    assert size < 100 * 1024 * 1024


def test_tiny_cache_is_rebuilt_when_marker_is_missing(tmp_path):
    root = build_tiny_models(tmp_path)
    (root / MARKER_NAME).unlink()
    (root / "sdxl-base" / "model_index.json").unlink()
    build_tiny_models(tmp_path)
    assert (root / "sdxl-base" / "model_index.json").is_file()


def test_sdxl_profile_names_the_real_checkpoints():
    profile = resolve_profile("sdxl")
    sources = {name: spec.source for name, spec in profile.specs.items()}
    assert sources["base"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert sources["inpaint"] == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert sources["controlnet_depth"] == "diffusers/controlnet-depth-sdxl-1.0"
    assert sources["controlnet_canny"] == "diffusers/controlnet-canny-sdxl-1.0"
    assert sources["depth"] == "depth-anything/Depth-Anything-V2-Small-hf"
    assert sources["segmenter"] == "mattmdjaga/segformer_b2_clothes"
    assert sources["planner"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert sources["music"] == "riffusion/riffusion-model-v1"
    ip = profile.spec("ip_adapter")
    assert (ip.source, ip.subfolder, ip.weight_name) == (
        "h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors")
    assert sources["realesrgan_x4plus"].endswith("/v0.1.0/RealESRGAN_x4plus.pth")
    assert sources["realesrgan_x2plus"].endswith("/v0.2.1/RealESRGAN_x2plus.pth")
    assert sources["realesr_general_x4v3"].endswith("/realesr-general-x4v3.pth")
    assert sources["realesr_general_wdn_x4v3"].endswith("/realesr-general-wdn-x4v3.pth")
    assert profile.spec("realesrgan_x4plus").options["num_block"] == 23
    assert profile.native_size == 1024 and profile.dtype == "float16"
    assert dict(profile.quality_steps) == {"low": 20, "medium": 30, "high": 45}
    catalog = profile.catalog()
    assert {row["name"] for row in catalog} == set(profile.specs)
    assert all(row["purpose"] and row["family"] for row in catalog)

    tiny = resolve_profile("tiny")
    assert set(tiny.specs) == set(profile.specs)
    assert all(spec.is_tiny for spec in tiny.specs.values())
    assert tiny.quality_steps["low"] < tiny.quality_steps["medium"] < tiny.quality_steps["high"]


def test_overrides_point_a_spec_elsewhere(tmp_path):
    profile = resolve_profile("sdxl", {"base": "someone/sdxl-finetune", "depth": str(tmp_path)})
    assert profile.spec("base").source == "someone/sdxl-finetune"
    assert profile.spec("depth").source == str(tmp_path)
    assert profile.spec("inpaint").source == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert profile.spec("inpaint").options["variant"] == "fp16"
    assert "variant" not in profile.spec("base").options  # another repo: its own files
    with pytest.raises(KeyError, match="no model 'nope'"):
        resolve_profile("sdxl", {"nope": "x/y"})
    with pytest.raises(ValueError, match="unknown model profile"):
        resolve_profile("sd3")


def test_override_to_a_local_directory_loads_through_the_same_path(tiny_store):
    depth_dir = tiny_root(tiny_store.cache_dir) / "depth-anything"
    store = ModelStore(profile="sdxl", device="cpu", cache_dir=tiny_store.cache_dir,
                       overrides={"depth": str(depth_dir)})
    depth = store.depth_estimator()(Image.new("RGB", (40, 30), (120, 80, 40)))
    assert depth.shape == (30, 40)


def test_missing_real_checkpoint_is_not_downloaded(tmp_path):
    store = ModelStore(profile="sdxl", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="realesr-general-x4v3.pth"):
        store.upscaler("realesr_general_x4v3")


def test_fetch_plan_lists_only_the_files_the_loaders_read(tmp_path):
    plan = {item.spec_names: item for item in fetch_plan(resolve_profile("sdxl"), tmp_path)}
    assert len(plan) == 18  # the IP-Adapter weights and its image encoder share one repo
    base = plan[("base",)]
    assert base.source == "stabilityai/stable-diffusion-xl-base-1.0" and not base.is_url
    assert "*/diffusion_pytorch_model.fp16.safetensors" in base.allow_patterns
    assert "model_index.json" in base.allow_patterns
    assert plan[("controlnet_canny",)].allow_patterns == (
        "config.json", "diffusion_pytorch_model.safetensors")
    ip = plan[("ip_adapter", "image_encoder")]
    assert "sdxl_models/ip-adapter_sdxl.safetensors" in ip.allow_patterns
    assert "sdxl_models/image_encoder/*.safetensors" in ip.allow_patterns
    assert "*.onnx" in plan[("depth",)].ignore_patterns
    x4 = plan[("realesrgan_x4plus",)]
    assert x4.is_url and x4.target == tmp_path / "realesrgan" / "RealESRGAN_x4plus.pth"
    assert plan[("speech",)].source == "microsoft/speecht5_tts"
    assert plan[("vocoder",)].source == "microsoft/speecht5_hifigan"
    assert plan[("speaker",)].is_url and plan[("speaker",)].target.name == "spkrec-xvect.zip"
    music = plan[("music",)]  # Riffusion without its safety checker or single-file checkpoint
    assert music.source == "riffusion/riffusion-model-v1" and len(music.revision) == 40
    assert {"tokenizer/*", "scheduler/*", "unet/*.safetensors", "text_encoder/*.safetensors",
            "vae/*.json"} <= set(music.allow_patterns)
    assert not any(p.startswith(("safety_checker", "feature_extractor", "*"))
                   for p in music.allow_patterns)
    assert fetch_plan(resolve_profile("tiny"), tmp_path) == []
    local = resolve_profile("sdxl", {"planner": str(tmp_path)})
    assert all("planner" not in item.spec_names for item in fetch_plan(local, tmp_path))


def test_release_file_is_fetched_into_the_cache_when_allowed(tmp_path):
    torch.manual_seed(0)
    official = realesrgan_arch.SRVGGNetCompact(3, 3, 64, 32, 4, "prelu")
    release = tmp_path / "release" / "my-general-x4v3.pth"
    release.parent.mkdir()
    torch.save({"params_ema": official.state_dict()}, release)
    overrides = {"realesr_general_x4v3": release.as_uri()}
    cache = tmp_path / "cache"
    offline = ModelStore(profile="sdxl", cache_dir=cache, overrides=overrides)
    with pytest.raises(FileNotFoundError, match="retouch fetch-models"):
        offline.upscaler("realesr_general_x4v3")
    online = ModelStore(profile="sdxl", cache_dir=cache, overrides=overrides,
                        local_files_only=False)
    network = online.upscaler("realesr_general_x4v3")
    assert (cache / "realesrgan" / "my-general-x4v3.pth").is_file()
    x = torch.rand(1, 3, 6, 6)
    with torch.inference_mode():
        assert torch.equal(network(x), official.eval()(x))


def _photo(width: int = 64, height: int = 64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_store_reports_profile_facts(tiny_store):
    assert tiny_store.native_size == 64
    assert tiny_store.quality_steps == {"low": 2, "medium": 3, "high": 4}
    assert tiny_store.device.type == "cpu"
    assert tiny_store.profile.name == "tiny"


def test_text2img_and_img2img_share_weights_and_run(tiny_store):
    text2img, img2img = tiny_store.text2img(), tiny_store.img2img()
    assert img2img.unet is text2img.unet and img2img.vae is text2img.vae
    assert img2img.scheduler is not text2img.scheduler
    assert text2img.vae_scale_factor == 8
    generator = torch.Generator().manual_seed(0)
    image = text2img("a photo", num_inference_steps=2, height=64, width=96,
                     generator=generator).images[0]
    assert image.size == (96, 64)
    again = text2img("a photo", num_inference_steps=2, height=64, width=96,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(again))
    edited = img2img("a photo", image=_photo(96, 64), strength=0.5, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert edited.size == (96, 64)


def test_inpaint_and_controlnet_pipelines_run(tiny_store):
    image = _photo(64, 64)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = tiny_store.inpaint()
    assert inpaint.unet.config.in_channels == 9
    out = inpaint("a photo", image=image, mask_image=mask, num_inference_steps=2, strength=0.9,
                  height=64, width=64).images[0]
    assert out.size == (64, 64)
    for kind in ("depth", "canny"):
        cn_img2img = tiny_store.controlnet_img2img(kind)
        assert cn_img2img.unet is tiny_store.text2img().unet
        assert cn_img2img.controlnet is tiny_store.controlnet(kind)
        out = cn_img2img("a photo", image=image, control_image=image, strength=0.6,
                         num_inference_steps=2).images[0]
        assert out.size == (64, 64)
        cn_inpaint = tiny_store.controlnet_inpaint(kind)
        assert cn_inpaint.unet is inpaint.unet
        out = cn_inpaint("a photo", image=image, mask_image=mask, control_image=image,
                         strength=0.9, num_inference_steps=2, height=64, width=64).images[0]
        assert out.size == (64, 64)
    assert tiny_store.controlnet("depth") is not tiny_store.controlnet("canny")
    with pytest.raises(ValueError, match="unknown ControlNet kind"):
        tiny_store.controlnet_img2img("pose")


def test_depth_estimator_returns_an_image_sized_map(tiny_store):
    depth = tiny_store.depth_estimator()(_photo(80, 48))
    assert depth.shape == (48, 80) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.std() > 0


def test_segmenter_labels_every_pixel(tiny_store):
    result = tiny_store.segmenter()(_photo(72, 40))
    assert result.names == SEGFORMER_CLOTHES_LABELS
    assert result.labels.shape == (40, 72)
    assert result.labels.min() >= 0 and result.labels.max() < len(SEGFORMER_CLOTHES_LABELS)
    everything = result.mask(*SEGFORMER_CLOTHES_LABELS)
    assert everything.all()
    assert result.mask("Face").sum() == (result.labels == 11).sum()
    with pytest.raises(KeyError):
        result.mask("Tail")


def test_planner_generates_with_a_chat_template(tiny_store):
    planner = tiny_store.planner()
    tokenizer, model = planner
    assert (tokenizer, model) == (planner.tokenizer, planner.model)
    messages = [{"role": "user", "content": "plan a photo of a woman in the city"}]
    prompt = planner.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   tokenize=False)
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = planner.tokenizer(prompt, return_tensors="pt")
    assert planner.tokenizer.decode(inputs["input_ids"][0]) == prompt  # byte-level round trip
    output = planner.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("name,factor", [("realesrgan_x2plus", 2), ("realesrgan_x4plus", 4),
                                         ("realesr_general_x4v3", 4),
                                         ("realesr_general_wdn_x4v3", 4)])
def test_tiny_upscalers_load_strict_and_upscale(tiny_store, name, factor):
    network = tiny_store.upscaler(name)
    assert name in UPSCALER_NAMES
    with torch.inference_mode():
        out = network(torch.rand(1, 3, 12, 20))
    assert out.shape == (1, 3, 12 * factor, 20 * factor)


def test_ip_adapter_twin_has_the_original_layout(tiny_store):
    weights = tiny_store.ip_adapter_weights()
    unet = tiny_store.text2img().unet
    cross_attention = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    assert sorted(weights["ip_adapter"]) == sorted(
        f"{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(cross_attention)) for kv in "kv")
    encoder, _ = tiny_store.image_encoder()
    assert tuple(weights["image_proj"]["proj.weight"].shape) == (
        4 * unet.config.cross_attention_dim, encoder.config.projection_dim)


@pytest.mark.parametrize("which", ["img2img", "inpaint"])
def test_reference_conditioning_steers_and_then_unloads(tiny_store, which):
    pipe = getattr(tiny_store, which)()
    image = _photo(64, 64)
    kwargs = dict(image=image, strength=0.9, num_inference_steps=2, output_type="np")
    if which == "inpaint":
        kwargs["mask_image"] = Image.new("L", image.size, 255)

    def run(**extra):
        return pipe("a photo", generator=torch.Generator().manual_seed(0), **kwargs,
                    **extra).images[0]

    plain = run()
    with tiny_store.reference_conditioning(pipe, scale=1.0):
        red = run(ip_adapter_image=Image.new("RGB", (50, 40), (220, 20, 20)))
        blue = run(ip_adapter_image=Image.new("RGB", (50, 40), (20, 20, 220)))
    assert np.abs(red - plain).mean() > 1e-3 and np.abs(red - blue).mean() > 1e-4
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
    assert np.array_equal(run(), plain)  # the shared UNet is back to normal


# --- Real-ESRGAN architecture --------------------------------------------------------------

def test_rrdbnet_x4plus_has_the_official_parameter_names():
    state = realesrgan_arch.RRDBNet(3, 3, 64, 23, 32, scale=4).state_dict()
    # conv_first + 23 RRDB x 3 RDB x 5 convs + conv_body, conv_up1/2, conv_hr, conv_last (w + b)
    assert len(state) == 2 + 23 * 3 * 5 * 2 + 5 * 2 == 702
    assert sum(t.numel() for t in state.values()) == 16_697_987
    expected = {
        "conv_first.weight": (64, 3, 3, 3),
        "body.0.rdb1.conv1.weight": (32, 64, 3, 3),
        "body.0.rdb1.conv5.weight": (64, 192, 3, 3),
        "body.22.rdb3.conv4.bias": (32,),
        "conv_body.weight": (64, 64, 3, 3),
        "conv_up1.weight": (64, 64, 3, 3),
        "conv_up2.bias": (64,),
        "conv_hr.weight": (64, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "body.23.rdb1.conv1.weight" not in state


def test_rrdbnet_x2plus_unshuffles_its_input():
    network = realesrgan_arch.RRDBNet(3, 3, 64, 23, 32, scale=2)
    assert tuple(network.state_dict()["conv_first.weight"].shape) == (64, 12, 3, 3)
    tiny = realesrgan_arch.RRDBNet(3, 3, 8, 1, 4, scale=2).eval()
    with torch.inference_mode():
        assert tiny(torch.rand(1, 3, 10, 14)).shape == (1, 3, 20, 28)


def test_srvgg_general_x4v3_has_the_official_parameter_names():
    state = realesrgan_arch.SRVGGNetCompact(3, 3, 64, 32, 4, "prelu").state_dict()
    # body.0 conv, body.1 PReLU, 32 x (conv, PReLU), last conv at body.66
    assert len(state) == 2 + 1 + 32 * 3 + 2 == 101
    assert sum(t.numel() for t in state.values()) == 1_213_296
    assert tuple(state["body.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["body.1.weight"].shape) == (64,)
    assert tuple(state["body.64.weight"].shape) == (64, 64, 3, 3)
    assert tuple(state["body.65.weight"].shape) == (64,)
    assert tuple(state["body.66.weight"].shape) == (48, 64, 3, 3)
    assert tuple(state["body.66.bias"].shape) == (48,)
    assert "body.67.weight" not in state


@pytest.mark.parametrize("key", ["params_ema", "params", None])
def test_load_network_reads_official_checkpoint_layouts(tmp_path, key):
    torch.manual_seed(0)
    source = realesrgan_arch.SRVGGNetCompact(3, 3, 8, 2, 4, "prelu").eval()
    path = tmp_path / "net.pth"
    state = source.state_dict()
    torch.save({key: state, "other": {}} if key else state, path)
    loaded = realesrgan_arch.load_network(path, "SRVGGNetCompact", num_feat=8, num_conv=2)
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), source(x))
    with pytest.raises(RuntimeError):  # strict: a different layout is refused
        realesrgan_arch.load_network(path, "SRVGGNetCompact", num_feat=8, num_conv=3)


def test_network_interpolation_is_a_weighted_sum():
    torch.manual_seed(0)
    first = realesrgan_arch.SRVGGNetCompact(3, 3, 8, 1).state_dict()
    second = realesrgan_arch.SRVGGNetCompact(3, 3, 8, 1).state_dict()
    mixed = realesrgan_arch.interpolate_state_dicts(first, second, 0.25)
    for name in first:
        assert torch.allclose(mixed[name], 0.25 * first[name] + 0.75 * second[name])
    assert all(torch.equal(realesrgan_arch.interpolate_state_dicts(first, second, 1.0)[n],
                           first[n]) for n in first)


def _reference_archs():
    """The official classes, or a skip: `realesrgan`/`basicsr` need torchvision and CUDA torch,
    so they exist only on the GPU image."""
    if importlib.util.find_spec("realesrgan") is None:
        pytest.skip("the realesrgan package is not installed (CPU environment)")
    try:
        from basicsr.archs.rrdbnet_arch import RRDBNet
        from realesrgan.archs.srvgg_arch import SRVGGNetCompact
    except ImportError as error:  # e.g. basicsr vs a newer torchvision
        pytest.skip(f"realesrgan is installed but does not import: {error}")
    return RRDBNet, SRVGGNetCompact


def test_matches_the_reference_implementation():
    ReferenceRRDBNet, ReferenceSRVGG = _reference_archs()
    torch.manual_seed(0)
    for ours, reference in [
        (realesrgan_arch.RRDBNet(3, 3, 16, 2, 8, scale=2), ReferenceRRDBNet(3, 3, scale=2,
                                                                           num_feat=16,
                                                                           num_block=2,
                                                                           num_grow_ch=8)),
        (realesrgan_arch.RRDBNet(3, 3, 16, 2, 8, scale=4), ReferenceRRDBNet(3, 3, scale=4,
                                                                           num_feat=16,
                                                                           num_block=2,
                                                                           num_grow_ch=8)),
        (realesrgan_arch.SRVGGNetCompact(3, 3, 16, 4, 4, "prelu"),
         ReferenceSRVGG(3, 3, num_feat=16, num_conv=4, upscale=4, act_type="prelu")),
    ]:
        reference.load_state_dict(ours.state_dict(), strict=True)
        x = torch.rand(1, 3, 16, 16)
        with torch.inference_mode():
            assert torch.allclose(ours.eval()(x), reference.eval()(x), atol=1e-6)


def test_speaker_xvector_is_the_mean_of_one_arctic_speaker(tmp_path):
    import io
    import zipfile

    from retouch.models.speech import read_speaker_embedding

    archive = tmp_path / "spkrec-xvect.zip"
    vectors = {"spkrec-xvect/cmu_us_slt_arctic-wav-arctic_a0001.npy": [3.0, 0.0],
               "spkrec-xvect/cmu_us_slt_arctic-wav-arctic_a0002.npy": [1.0, 0.0],
               "spkrec-xvect/cmu_us_bdl_arctic-wav-arctic_a0001.npy": [0.0, 5.0]}
    with zipfile.ZipFile(archive, "w") as out:
        for name, vector in vectors.items():
            buffer = io.BytesIO()
            np.save(buffer, np.array(vector, np.float32))
            out.writestr(name, buffer.getvalue())
    assert read_speaker_embedding(archive, "slt").tolist() == [1.0, 0.0]
    assert read_speaker_embedding(archive, "bdl").tolist() == [0.0, 1.0]
    with pytest.raises(FileNotFoundError, match="'awb'"):
        read_speaker_embedding(archive, "awb")
