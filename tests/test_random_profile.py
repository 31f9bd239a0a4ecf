"""The `sdxl-random` profile builds every production architecture at full size from its published
config (on `meta` here: nothing is allocated), the store records what each model came from, and
the diffusion pipelines share one set of weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.models.fetch import fetch_plan
from retouch.models.registry import resolve_profile
from retouch.models.revisions import content_revision
from retouch.models.store import ModelStore

# Parameter counts of the published checkpoints. Each comes from the model card or from public
# counts of the released weight files (never from this code); the source is named per figure.
PUBLISHED_PARAMETERS = {
    # SDXL base UNet: 2,567,463,684 (1,680 tensors of stabilityai/stable-diffusion-xl-base-1.0,
    # counted in public tooling: e.g. "unet params = 2567463684" in a diffusers DreamBooth log,
    # "1680 tensors · 2,567,463,684 params" in a GGUF conversion of sd_xl_base_1.0; the SDXL
    # report rounds it to 2.6B). unet/diffusion_pytorch_model.fp16.safetensors is 5,135,149,760
    # bytes at revision 462165984030d82259a11f4367a4eed129e94a7b, i.e. 2 bytes per parameter.
    "unet": 2_567_463_684,
    # SDXL inpainting 0.1 UNet: the base UNet with a 9-channel conv_in, 2,567,478,084 (public
    # expected-count table for "sdxl-inpainting", conv_in [320, 9, 3, 3]).
    "inpaint_unet": 2_567_478_084,
    # CLIP ViT-L/14 text encoder (text_encoder): 123,060,480; OpenCLIP ViT-bigG/14 with projection
    # (text_encoder_2): 694,659,840; SDXL VAE: 83,653,863 (public per-component counts of
    # stable-diffusion-xl-base-1.0: "CLIP-G 694,659,840 | CLIP-L 123,060,480", "vae: 83,653,863";
    # their fp16 safetensors are 246,144,152 / 1,389,382,176 / 167,335,342 bytes).
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae": 83_653_863,
    # SDXL ControlNet (ControlNetModel.from_unet of the SDXL base UNet, the recipe of
    # diffusers/controlnet-depth-sdxl-1.0 and -canny-): 1,251,014,160 (public count of an SDXL
    # ControlNet of this architecture loaded with diffusers; "ControlNet: 844 tensors,
    # 1251014160 parameters" in a public SDXL project report).
    "controlnet": 1_251_014_160,
    # Qwen2.5-0.5B-Instruct: 494,032,768 (model card: 0.49B; exact count of the released
    # safetensors in several public tools, e.g. "params 494032768", "with 494032768 (0.5B)").
    "planner": 494_032_768,
    # Depth-Anything-V2-Small-hf: 24,785,089 (model card: 24.8M; exact count in public training
    # logs "trainable_params=24785089" and "backbone_total": 24785089).
    "depth": 24_785_089,
    # Real-ESRGAN x4plus (RRDBNet, 23 blocks): 16,697,987 (public SR model table
    # "RealESRGAN ... | 16697987 | 55.11B").
    "realesrgan_x4plus": 16_697_987,
}
# Published figures that are rounded: (value, half the rounding step).
PUBLISHED_ROUNDED = {
    # h94/IP-Adapter model card: sdxl_models/image_encoder is "OpenCLIP-ViT-bigG-14 with
    # 1844.9M parameter".
    "image_encoder": (1_844_900_000, 50_000),
    # h94/IP-Adapter sdxl_models/ip-adapter_sdxl.safetensors (fp16) is listed as 670.0 MB:
    # 670.0 MiB / 2 bytes = 351.27M parameters (±0.05 MiB).
    "ip_adapter": (670.0 * 2 ** 20 / 2, 0.05 * 2 ** 20 / 2),
}
# mattmdjaga/segformer_b2_clothes model.safetensors is 109,493,236 bytes of float32: 8 bytes of
# length, a JSON header (tens of KB for ~400 tensors) and 4 bytes per parameter.
SEGFORMER_FILE_BYTES = 109_493_236
SAFETENSORS_HEADER_MAX = 128 * 1024


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def meta_store() -> ModelStore:
    return ModelStore(profile="sdxl-random", device="meta")


def test_every_family_has_the_published_parameter_count(meta_store):
    base, inpaint = meta_store.text2img(), meta_store.inpaint()
    encoder, _ = meta_store.image_encoder()
    adapter = meta_store.ip_adapter_weights()
    built = {
        "unet": count(base.unet), "inpaint_unet": count(inpaint.unet),
        "text_encoder": count(base.text_encoder), "text_encoder_2": count(base.text_encoder_2),
        "vae": count(base.vae), "controlnet": count(meta_store.controlnet("depth")),
        "planner": count(meta_store.planner().model),
        "depth": count(meta_store.depth_estimator().model),
        "realesrgan_x4plus": sum(t.numel() for t in
                                 meta_store.upscaler_weights("realesrgan_x4plus").values()),
        "image_encoder": count(encoder),
        "ip_adapter": sum(t.numel() for group in adapter.values() for t in group.values()),
    }
    for name, expected in PUBLISHED_PARAMETERS.items():
        assert built[name] == expected, name
    for name, (expected, tolerance) in PUBLISHED_ROUNDED.items():
        assert abs(built[name] - expected) <= tolerance, (name, built[name])
    assert count(meta_store.controlnet("canny")) == PUBLISHED_PARAMETERS["controlnet"]
    header = SEGFORMER_FILE_BYTES - 8 - 4 * count(meta_store.segmenter().model)
    assert 0 < header < SAFETENSORS_HEADER_MAX


def test_upscalers_use_the_official_release_configs():
    # Real-ESRGAN's inference script builds x2plus as RRDBNet(num_in_ch=3, num_out_ch=3,
    # num_feat=64, num_block=23, num_grow_ch=32, scale=2) and realesr-general-x4v3 as
    # SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4,
    # act_type='prelu'); no exact parameter count is published for either.
    specs = resolve_profile("sdxl-random").specs
    assert dict(specs["realesrgan_x2plus"].options) == {
        "arch": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23,
        "num_grow_ch": 32, "scale": 2}
    assert dict(specs["realesr_general_x4v3"].options) == {
        "arch": "SRVGGNetCompact", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64,
        "num_conv": 32, "upscale": 4, "act_type": "prelu"}


def test_pipelines_assemble_on_meta_and_share_their_components(meta_store):
    base = meta_store.text2img()
    pipes = meta_store.diffusion_pipelines()
    assert base.unet.device.type == "meta" and base.unet.dtype == torch.bfloat16
    assert base.vae_scale_factor == 8 and base.tokenizer.model_max_length == 77
    assert len(base.tokenizer) == base.text_encoder.config.vocab_size == 49408
    assert base.tokenizer_2.pad_token == "!"  # the published tokenizer_2 pads with "!"
    for pipe in pipes:
        assert pipe.text_encoder is base.text_encoder
        assert pipe.text_encoder_2 is base.text_encoder_2 and pipe.vae is base.vae
    inpaint = meta_store.inpaint()
    assert inpaint.unet is not base.unet and inpaint.unet.config.in_channels == 9
    assert meta_store.controlnet_inpaint("depth").unet is inpaint.unet
    assert meta_store.controlnet_img2img("canny").unet is base.unet
    assert len({id(pipe.scheduler) for pipe in pipes}) == len(pipes)


def test_random_profile_needs_no_download_and_records_its_seed(meta_store):
    assert fetch_plan(resolve_profile("sdxl-random"), "/nonexistent") == []
    assert meta_store.revisions()["base"] == "random:0"
    assert set(meta_store.revisions().values()) == {"random:0"}
    assert ModelStore(profile="sdxl-random", device="meta", seed=7).revision("depth") == "random:7"


def test_random_twins_are_seeded_and_run_on_cpu(meta_store):
    first = ModelStore(profile="sdxl-random", device="cpu")
    again = ModelStore(profile="sdxl-random", device="cpu")
    other = ModelStore(profile="sdxl-random", device="cpu", seed=1)
    name = "realesr_general_x4v3"
    weights = first.upscaler_weights(name)
    assert all(torch.equal(weights[k], again.upscaler_weights(name)[k]) for k in weights)
    assert not torch.equal(weights["body.0.weight"], other.upscaler_weights(name)["body.0.weight"])
    with torch.inference_mode():
        out = first.upscaler(name)(torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()

    depth = first.depth_estimator()(Image.new("RGB", (40, 30), (120, 80, 40)))
    assert depth.shape == (30, 40) and np.isfinite(depth).all()
    assert first.depth_estimator().model.dtype == torch.float32  # CPU default

    planner = meta_store.planner()  # 0.5B parameters: on meta; its tokenizer is real
    ids = planner.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [151643, 151644, 151645]  # Qwen2.5's ids, from its config's bos/eos
    assert planner.model.config.vocab_size == 151936 >= len(planner.tokenizer)
    prompt = planner.tokenizer.apply_chat_template(
        [{"role": "user", "content": "plan a photo"}], add_generation_prompt=True, tokenize=False)
    assert planner.tokenizer.decode(planner.tokenizer(prompt)["input_ids"]) == prompt


def test_explicit_dtype_wins_and_pinned_specs_keep_theirs():
    store = ModelStore(profile="sdxl-random", device="meta", dtype=torch.float16)
    assert store.dtype_for(store.spec("base")) == torch.float16
    assert store.dtype_for(store.spec("depth")) == torch.float32  # the spec pins float32
    assert ModelStore(profile="sdxl", device="cpu").dtype_for(store.spec("base")) == torch.float32
    assert ModelStore(profile="tiny", dtype="bfloat16").dtype_for(
        store.spec("base")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown torch dtype"):
        ModelStore(profile="tiny", dtype="float33")


# --- revisions of loaded models -------------------------------------------------------------------

def test_tiny_revisions_are_content_hashes(tiny_store, tmp_path):
    tiny_store.text2img()
    revisions = tiny_store.revisions()
    assert revisions["base"].startswith("sha256:") and len(revisions["base"]) == 7 + 64
    source = Path(tiny_store.source_of(tiny_store.spec("base")))
    copy = shutil.copytree(source, tmp_path / "elsewhere")
    assert content_revision(copy) == revisions["base"]  # the path does not enter the hash
    (copy / "model_index.json").write_text("{}")
    assert content_revision(copy) != revisions["base"]
    assert tiny_store.revision("ip_adapter") != tiny_store.revision("image_encoder")


def test_sdxl_profile_is_pinned_and_resolves_hub_snapshots(tmp_path, monkeypatch):
    import huggingface_hub.constants

    profile = resolve_profile("sdxl")
    from retouch.models.registry import UNPINNED_SOURCES

    hub_specs = [s for s in profile.specs.values() if not s.source.startswith("https://")
                 and s.source not in UNPINNED_SOURCES]
    assert hub_specs and all(len(s.revision) == 40 for s in hub_specs)
    assert all(item.revision for item in fetch_plan(profile, tmp_path)
               if not item.is_url and item.source not in UNPINNED_SOURCES)

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    pinned = profile.spec("depth").revision
    repo = cache / "models--depth-anything--Depth-Anything-V2-Small-hf"
    (repo / "snapshots" / pinned).mkdir(parents=True)
    assert ModelStore(profile="sdxl").revision("depth") == pinned

    latest = "f" * 40  # an override has no pin: the cached branch ref decides
    other = cache / "models--someone--depth-finetune"
    (other / "snapshots" / latest).mkdir(parents=True)
    (other / "refs").mkdir()
    (other / "refs" / "main").write_text(latest)
    store = ModelStore(profile="sdxl", overrides={"depth": "someone/depth-finetune"})
    assert store.revision("depth") == latest


# --- shared IP-Adapter --------------------------------------------------------------------------

def test_ip_adapter_is_built_once_and_shared_by_both_unets(tiny_store):
    store = ModelStore(profile="tiny", cache_dir=tiny_store.cache_dir)
    seen = []
    for pipe in (store.img2img(), store.inpaint(), store.img2img()):
        with store.reference_conditioning(pipe, scale=0.3):
            processors = pipe.unet.attn_processors
            cross = [p for n, p in processors.items() if n.endswith("attn2.processor")]
            assert all(p.scale == [0.3] for p in cross)
            seen.append([id(p) for p in cross])
        assert pipe.unet.encoder_hid_proj is None
    assert seen[0] == seen[1] == seen[2]


# riffusion/riffusion-model-v1 at the pinned revision (its "Adding `safetensors` variant" commit)
# lists unet/diffusion_pytorch_model.safetensors at 3,438,167,534 bytes, text_encoder/
# model.safetensors at 492,265,879 and vae/diffusion_pytorch_model.safetensors at 334,643,276:
# float32, so 4 bytes a parameter plus 8 bytes of length and a JSON header.
RIFFUSION_FILE_BYTES = {"unet": 3_438_167_534, "text_encoder": 492_265_879, "vae": 334_643_276}


def test_the_music_model_is_stable_diffusion_1_5_at_riffusions_size(meta_store):
    pipe = meta_store.music().pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    assert pipe.unet.device.type == "meta" and pipe.vae_scale_factor == 8
    assert count(pipe.text_encoder) == PUBLISHED_PARAMETERS["text_encoder"]  # CLIP ViT-L/14
    assert count(pipe.vae) == PUBLISHED_PARAMETERS["vae"]  # SDXL kept SD's VAE architecture
    for name, file_bytes in RIFFUSION_FILE_BYTES.items():
        header = file_bytes - 8 - 4 * count(getattr(pipe, name))
        assert 0 < header < SAFETENSORS_HEADER_MAX, name
    assert meta_store.music().griffin_lim_iters == 32
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
