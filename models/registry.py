"""What weights exist: model specs grouped into profiles.

A `ModelSpec` names one loadable model: its family, the class that loads it, and where it comes
from (`source`: a hub id, a local directory or file, a URL for a `.pth`, or `tiny:<dir>` for a
twin inside the tiny cache). Profiles:

- `tiny`: small, randomly initialised twins of every production class, built deterministically by
  `retouch.models.tiny.build_tiny_models` and loaded through the same `from_pretrained` path. CPU.
- `sdxl`: the real checkpoints (SDXL base/inpaint, ControlNet depth/canny, IP-Adapter, Depth
  Anything V2, a clothes segmenter, Real-ESRGAN, a small instruct LLM, SpeechT5 text to speech,
  Riffusion text to music),
  pinned to hub commits where one is known. GPU.
- `sdxl-random`: every `sdxl` model at its real size, built from its published config (shipped in
  `retouch/models/configs/`) with random weights (`random:<config dir>` sources, seeded by the
  profile's `seed`): the production architectures without a download, for GPU benchmarks and
  for tests of the production code path on the `meta` device.

`quality_steps` maps the API's quality to denoising steps: tiny 2/3/4 (tests stay fast); sdxl
20/30/45 (Euler; 30 is SDXL's usual sweet spot, 45 adds fine detail at 1.5x the cost).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

TINY_PREFIX = "tiny:"
RANDOM_PREFIX = "random:"

REALESRGAN_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"

SEGFORMER_CLOTHES_LABELS = (
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
    "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag",
    "Scarf",
)

# ADE20K's 150 scene classes in the order of the published `id2label` (huggingface/label-files
# ade20k-id2label.json, which the openmmlab UperNet checkpoints carry; its "bed " has a trailing
# space, stripped here and when the pipelines read a model's labels).
ADE20K_LABELS = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

U2NET_RELEASE = "https://github.com/xuebinqin/U-2-Net/releases/download/v1.0/u2net.pth"
# U²-Net's published architecture (`U2NET(3, 1)` of the official model/u2net.py): per stage
# (mid, out) channels of its RSU blocks; the tiny twin keeps the layout with fewer channels.
U2NET_CONFIG = {"arch": "U2NET", "in_ch": 3, "out_ch": 1,
                "encoder": ((32, 64), (32, 128), (64, 256), (128, 512), (256, 512), (256, 512)),
                "decoder": ((256, 512), (128, 256), (64, 128), (32, 64), (16, 64))}
TINY_U2NET = {"arch": "U2NET", "in_ch": 3, "out_ch": 1,
              "encoder": ((2, 4), (2, 4), (2, 4), (2, 4), (2, 4), (2, 4)),
              "decoder": ((2, 4), (2, 4), (2, 4), (2, 4), (2, 4))}

# Speaker x-vectors of CMU ARCTIC (speechbrain spkrec-xvect-voxceleb, 512 dims), one `.npy` per
# utterance, as the SpeechT5 examples use them; the `speaker` option picks whose (slt: US female).
CMU_ARCTIC_XVECTORS = ("https://huggingface.co/datasets/Matthijs/cmu-arctic-xvectors/resolve/"
                       "main/spkrec-xvect.zip")

UPSCALER_NAMES = ("realesrgan_x2plus", "realesrgan_x4plus", "realesr_general_x4v3",
                  "realesr_general_wdn_x4v3")


@dataclass(frozen=True)
class ModelSpec:
    """One model: `loader` is the class (or `"realesrgan"` for a `.pth` network) that loads it."""

    name: str
    family: str  # diffusion | controlnet | ip_adapter | depth | segmentation | matting | llm
    #              | upscaler | speech | music
    loader: str
    source: str
    subfolder: str | None = None
    weight_name: str | None = None
    revision: str | None = None
    dtype: str | None = None  # None: the profile's dtype
    purpose: str = ""
    # Loader options: `variant` (e.g. "fp16" weight files), a Real-ESRGAN arch config.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.source.startswith(TINY_PREFIX)

    @property
    def is_random(self) -> bool:
        """Built from a published config with random weights (`random:<config dir>`)."""
        return self.source.startswith(RANDOM_PREFIX)

    def with_source(self, source: str) -> "ModelSpec":
        """This spec pointed at another hub id / local path. The revision and the weight
        `variant` belong to the original repository, so they are dropped."""
        options = {k: v for k, v in self.options.items() if k != "variant"}
        return dataclasses.replace(self, source=source, revision=None,
                                   options=MappingProxyType(options))


@dataclass(frozen=True)
class Profile:
    name: str
    specs: Mapping[str, ModelSpec]
    quality_steps: Mapping[str, int]
    native_size: int  # the base model's trained square size in pixels
    dtype: str  # default torch dtype name for diffusion / transformers models
    seed: int | None = None  # random-weight profiles: the seed every random model derives from

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"profile {self.name!r} has no model {name!r}; "
                           f"known: {sorted(self.specs)}") from None

    def catalog(self) -> list[dict[str, str]]:
        """One row per model for a human-readable catalog (CLI, docs)."""
        return [{"name": s.name, "family": s.family, "source": s.source,
                 "purpose": s.purpose} for s in self.specs.values()]


def _realesrgan(name: str, source: str, purpose: str, **options: Any) -> ModelSpec:
    return ModelSpec(name=name, family="upscaler", loader="realesrgan", source=source,
                     dtype="float32", purpose=purpose, options=MappingProxyType(options))


_PURPOSES = {
    "base": "SDXL base: text→image and image→image (generator, editor, filters, carousel)",
    "inpaint": "SDXL inpainting UNet: erase, cloth/object/person/location placement",
    "controlnet_depth": "depth ControlNet: angle change reprojection fill, atmosphere changes",
    "controlnet_canny": "canny ControlNet: structure-preserving atmosphere changes, filters",
    "ip_adapter": "IP-Adapter weights: reference-image conditioning (editor, placements)",
    "image_encoder": "CLIP vision encoder for the IP-Adapter",
    "depth": "monocular depth (relative, larger = nearer) for angle change and ControlNet",
    "segmenter": "person / clothes semantic segmentation (18 labels) for masks",
    "scene_segmenter": "scene semantic segmentation (ADE20K, 150 classes): enhancement regions "
                       "(walls, floor, ceiling, sky, lawn, furniture, people)",
    "matting": "salient-object matting (U²-Net): a soft alpha for transparent backgrounds and "
               "cut-outs",
    "planner": "small instruct LLM that plans carousel shots",
    "speech": "text-to-speech (SpeechT5, character input): the voice-over of a video",
    "vocoder": "HiFi-GAN vocoder: SpeechT5's mel spectrogram to a 16 kHz waveform",
    "speaker": "the voice-over's voice: a speaker x-vector SpeechT5 is conditioned on",
    "music": "Riffusion (Stable Diffusion 1.5 fine-tuned on mel spectrograms): a video's "
             "background music from its `background_music` text",
    "realesrgan_x2plus": "Real-ESRGAN 2x (RRDBNet)",
    "realesrgan_x4plus": "Real-ESRGAN 4x (RRDBNet)",
    "realesr_general_x4v3": "Real-ESRGAN general 4x, strong denoise (SRVGGNetCompact)",
    "realesr_general_wdn_x4v3": "Real-ESRGAN general 4x, weak denoise (SRVGGNetCompact)",
}


# Hub commits the `sdxl` profile is pinned to (snapshot hashes of the published repositories;
# docs/models.md says where each was read).
SDXL_REVISIONS = {
    "stabilityai/stable-diffusion-xl-base-1.0": "462165984030d82259a11f4367a4eed129e94a7b",
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": "115134f363124c53c7d878647567d04daf26e41e",
    "diffusers/controlnet-depth-sdxl-1.0": "17bb97973f29801224cd66f192c5ffacf82648b4",
    "diffusers/controlnet-canny-sdxl-1.0": "eb115a19a10d14909256db740ed109532ab1483c",
    "h94/IP-Adapter": "018e402774aeeddd60609b4ecdb7e298259dc729",
    "depth-anything/Depth-Anything-V2-Small-hf": "5426e4f0f36572d16453bbda7a8389317b1bef99",
    "mattmdjaga/segformer_b2_clothes": "584abc1e1d260e23c0fc627c5217a09b2b461046",
    "Qwen/Qwen2.5-0.5B-Instruct": "7ae557604adf67be50417f59c2c2f167def9a775",
    # The commit that added the safetensors files (the repository's first weights are pickles).
    "riffusion/riffusion-model-v1": "ea2085a79829d34f529dbec1906321335c49195b",
}

# Hub repositories the `sdxl` profile names without a pinned commit: no public record of a
# snapshot hash was found; `retouch fetch-models` takes the default branch and
# `ModelStore.revision` records the commit it resolved to (docs/models.md).
UNPINNED_SOURCES = ("openmmlab/upernet-convnext-small", "microsoft/speecht5_tts",
                    "microsoft/speecht5_hifigan")

# The inpaint pipeline loads only these from its own repository; the text encoders, tokenizers and
# VAE are the base model's (`ModelStore.inpaint` shares them through `from_pipe`).
INPAINT_COMPONENTS = ("unet", "scheduler")
# Riffusion's repository also ships a safety checker (an image classifier, meaningless on
# spectrograms) and a single-file checkpoint; the pipeline loads only these.
MUSIC_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Griffin-Lim iterations turning a spectrogram into a waveform (the reference's 32; the tiny
# profile uses fewer, as it uses fewer denoising steps).
MUSIC_GRIFFIN_LIM_ITERS = 32


def _sdxl_profile() -> Profile:
    rrdb = {"arch": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64,
            "num_block": 23, "num_grow_ch": 32}
    srvgg = {"arch": "SRVGGNetCompact", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64,
             "num_conv": 32, "upscale": 4, "act_type": "prelu"}
    fp16 = MappingProxyType({"variant": "fp16"})  # half-size weight files these repos publish
    specs = [
        ModelSpec("base", "diffusion", "StableDiffusionXLPipeline",
                  "stabilityai/stable-diffusion-xl-base-1.0", purpose=_PURPOSES["base"],
                  options=fp16),
        ModelSpec("inpaint", "diffusion", "StableDiffusionXLInpaintPipeline",
                  "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                  purpose=_PURPOSES["inpaint"],
                  options=MappingProxyType({"variant": "fp16", "components": INPAINT_COMPONENTS})),
        ModelSpec("controlnet_depth", "controlnet", "ControlNetModel",
                  "diffusers/controlnet-depth-sdxl-1.0", purpose=_PURPOSES["controlnet_depth"],
                  options=fp16),
        ModelSpec("controlnet_canny", "controlnet", "ControlNetModel",
                  "diffusers/controlnet-canny-sdxl-1.0", purpose=_PURPOSES["controlnet_canny"]),
        ModelSpec("ip_adapter", "ip_adapter", "IPAdapter", "h94/IP-Adapter",
                  subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors",
                  purpose=_PURPOSES["ip_adapter"]),
        ModelSpec("image_encoder", "ip_adapter", "CLIPVisionModelWithProjection",
                  "h94/IP-Adapter", subfolder="sdxl_models/image_encoder",
                  purpose=_PURPOSES["image_encoder"]),
        ModelSpec("depth", "depth", "AutoModelForDepthEstimation",
                  "depth-anything/Depth-Anything-V2-Small-hf", dtype="float32",
                  purpose=_PURPOSES["depth"]),
        ModelSpec("segmenter", "segmentation", "SegformerForSemanticSegmentation",
                  "mattmdjaga/segformer_b2_clothes", dtype="float32",
                  purpose=_PURPOSES["segmenter"]),
        ModelSpec("scene_segmenter", "segmentation", "UperNetForSemanticSegmentation",
                  "openmmlab/upernet-convnext-small", dtype="float32",
                  purpose=_PURPOSES["scene_segmenter"]),
        ModelSpec("matting", "matting", "u2net", U2NET_RELEASE, dtype="float32",
                  purpose=_PURPOSES["matting"], options=MappingProxyType(dict(U2NET_CONFIG))),
        ModelSpec("planner", "llm", "AutoModelForCausalLM", "Qwen/Qwen2.5-0.5B-Instruct",
                  purpose=_PURPOSES["planner"]),
        ModelSpec("speech", "speech", "SpeechT5ForTextToSpeech", "microsoft/speecht5_tts",
                  dtype="float32", purpose=_PURPOSES["speech"]),
        ModelSpec("vocoder", "speech", "SpeechT5HifiGan", "microsoft/speecht5_hifigan",
                  dtype="float32", purpose=_PURPOSES["vocoder"]),
        ModelSpec("speaker", "speech", "speaker_embedding", CMU_ARCTIC_XVECTORS, dtype="float32",
                  purpose=_PURPOSES["speaker"], options=MappingProxyType({"speaker": "slt"})),
        ModelSpec("music", "music", "StableDiffusionPipeline", "riffusion/riffusion-model-v1",
                  purpose=_PURPOSES["music"], options=MappingProxyType({
                      "components": MUSIC_COMPONENTS,
                      "griffin_lim_iters": MUSIC_GRIFFIN_LIM_ITERS})),
        _realesrgan("realesrgan_x2plus", f"{REALESRGAN_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth",
                    _PURPOSES["realesrgan_x2plus"], scale=2, **rrdb),
        _realesrgan("realesrgan_x4plus", f"{REALESRGAN_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth",
                    _PURPOSES["realesrgan_x4plus"], scale=4, **rrdb),
        _realesrgan("realesr_general_x4v3",
                    f"{REALESRGAN_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth",
                    _PURPOSES["realesr_general_x4v3"], **srvgg),
        _realesrgan("realesr_general_wdn_x4v3",
                    f"{REALESRGAN_RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
                    _PURPOSES["realesr_general_wdn_x4v3"], **srvgg),
    ]
    specs = [dataclasses.replace(s, revision=SDXL_REVISIONS.get(s.source)) for s in specs]
    return Profile("sdxl", MappingProxyType({s.name: s for s in specs}),
                   MappingProxyType({"low": 20, "medium": 30, "high": 45}),
                   native_size=1024, dtype="float16")


# Tiny twins' Real-ESRGAN configs: the official key pattern with fewer blocks and features.
TINY_RRDB = {"arch": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1,
             "num_grow_ch": 4}
TINY_SRVGG = {"arch": "SRVGGNetCompact", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8,
              "num_conv": 2, "upscale": 4, "act_type": "prelu"}

# Directories / files inside the tiny cache, one per tiny spec.
TINY_SOURCES = {
    "base": "sdxl-base", "inpaint": "sdxl-inpaint", "controlnet_depth": "controlnet-depth",
    "controlnet_canny": "controlnet-canny", "ip_adapter": "ip-adapter",
    "image_encoder": "ip-adapter", "depth": "depth-anything", "segmenter": "segformer-clothes",
    "scene_segmenter": "upernet-ade20k", "matting": "u2net/u2net.pth", "planner": "planner-lm",
    "speech": "speecht5-tts", "vocoder": "speecht5-hifigan", "speaker": "speecht5-speaker.npy",
    "music": "riffusion",
    "realesrgan_x2plus": "realesrgan/RealESRGAN_x2plus.pth",
    "realesrgan_x4plus": "realesrgan/RealESRGAN_x4plus.pth",
    "realesr_general_x4v3": "realesrgan/realesr-general-x4v3.pth",
    "realesr_general_wdn_x4v3": "realesrgan/realesr-general-wdn-x4v3.pth",
}


TINY_GRIFFIN_LIM_ITERS = 4


def _tiny_profile() -> Profile:
    sdxl = _sdxl_profile()
    specs = {}
    for name, spec in sdxl.specs.items():
        options = {k: v for k, v in spec.options.items() if k != "variant"}
        if spec.family == "upscaler":
            options = dict(TINY_RRDB if options["arch"] == "RRDBNet" else TINY_SRVGG)
            if name == "realesrgan_x2plus":
                options["scale"] = 2
            elif name == "realesrgan_x4plus":
                options["scale"] = 4
        elif spec.family == "matting":
            options = dict(TINY_U2NET)
        elif name == "speaker":
            options = {}
        elif name == "music":
            options["griffin_lim_iters"] = TINY_GRIFFIN_LIM_ITERS
        subfolder = "image_encoder" if name == "image_encoder" else None
        weight_name = "ip-adapter_sdxl.safetensors" if name == "ip_adapter" else None
        specs[name] = dataclasses.replace(
            spec, source=TINY_PREFIX + TINY_SOURCES[name], revision=None, subfolder=subfolder,
            weight_name=weight_name, dtype="float32", options=MappingProxyType(options))
    return Profile("tiny", MappingProxyType(specs),
                   MappingProxyType({"low": 2, "medium": 3, "high": 4}),
                   native_size=64, dtype="float32")


# Published configs (package data under `configs/`) the random twins are built from, per spec.
# The canny ControlNet's own config could not be retrieved; it is the same `ControlNetModel`
# recipe (`from_unet` of SDXL base) as the depth one, so it is built from the depth config.
RANDOM_CONFIGS = {
    "base": "stable-diffusion-xl-base-1.0",
    "inpaint": "stable-diffusion-xl-1.0-inpainting-0.1",
    "controlnet_depth": "controlnet-depth-sdxl-1.0",
    "controlnet_canny": "controlnet-depth-sdxl-1.0",
    "ip_adapter": "ip-adapter-sdxl-image-encoder",
    "image_encoder": "ip-adapter-sdxl-image-encoder",
    "depth": "depth-anything-v2-small-hf",
    "segmenter": "segformer-b2-clothes",
    "scene_segmenter": "upernet-convnext-small",
    "matting": "u2net",  # an arch config in the spec's options, like the upscalers
    "planner": "qwen2.5-0.5b-instruct",
    "speech": "speecht5-tts",
    "vocoder": "speecht5-hifigan",
    "speaker": "speecht5-tts",  # a random vector of the model's `speaker_embedding_dim`
    "music": "riffusion-model-v1",
}
RANDOM_SEED = 0


def _sdxl_random_profile() -> Profile:
    """`sdxl` with every model built at full size from its published config, random weights.

    bfloat16 by default: random weights have no fp16-safe activation range (the caller may still
    ask for another dtype)."""
    sdxl = _sdxl_profile()
    specs = {}
    for name, spec in sdxl.specs.items():
        options = {k: v for k, v in spec.options.items() if k != "variant"}
        config = RANDOM_CONFIGS.get(name, "realesrgan")  # upscalers: the arch config in options
        specs[name] = dataclasses.replace(
            spec, source=RANDOM_PREFIX + config, revision=None, subfolder=None,
            weight_name=None, options=MappingProxyType(options))
    return dataclasses.replace(sdxl, name="sdxl-random", specs=MappingProxyType(specs),
                               dtype="bfloat16", seed=RANDOM_SEED)


PROFILE_BUILDERS = {"tiny": _tiny_profile, "sdxl": _sdxl_profile,
                    "sdxl-random": _sdxl_random_profile}
PROFILE_NAMES = tuple(PROFILE_BUILDERS)


def resolve_profile(name: str, overrides: Mapping[str, str] | None = None) -> Profile:
    """The profile `name` with `overrides` ({spec name: hub id or local path}) applied."""
    try:
        profile = PROFILE_BUILDERS[name]()
    except KeyError:
        raise ValueError(f"unknown model profile {name!r}; known: {list(PROFILE_NAMES)}") from None
    if not overrides:
        return profile
    specs = dict(profile.specs)
    for spec_name, source in overrides.items():
        specs[spec_name] = profile.spec(spec_name).with_source(str(source))
    return dataclasses.replace(profile, specs=MappingProxyType(specs))
