"""`ModelStore`: lazily loads and caches every model of one profile on one device.

All loading goes through `from_pretrained(<local dir or hub id>, local_files_only=...)`, the same
code path for the tiny twins (built on first use into the cache) and the real checkpoints. With
`local_files_only=True` (the default) nothing is downloaded: production pre-fetches its
checkpoints (`retouch fetch-models`, `retouch.models.fetch`) or points overrides at local
directories. Random twins (`sdxl-random`) are built from their packaged configs instead
(`retouch.models.random_weights`) and then go through the same pipeline assembly.

Pipelines returned here share their heavy components (`from_pipe`): one set of text encoders,
tokenizers and VAE for every diffusion pipeline, the base UNet for text2img / img2img / ControlNet
img2img, the inpaint UNet for inpaint / ControlNet inpaint, and one IP-Adapter (built once,
attached for the duration of `reference_conditioning`). Each pipeline has its own scheduler.
One store serves one call at a time per pipeline; callers that run pipelines concurrently use one
store per worker.

`revisions()` says what each loaded model came from (`retouch.models.revisions`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from retouch.models.accel import AccelSettings, apply_cuda_defaults
from retouch.models.registry import (MUSIC_GRIFFIN_LIM_ITERS, TINY_PREFIX, ModelSpec, Profile,
                                     resolve_profile)
from retouch.models.revisions import content_revision, hub_revision, random_revision

if TYPE_CHECKING:
    from retouch.models.speech import SpeechSynthesizer

CONTROLNET_KINDS = ("depth", "canny")


def default_cache_dir() -> Path:
    return Path.home() / ".retouch" / "models"


@dataclass(frozen=True)
class Planner:
    """The carousel shot planner: a chat tokenizer and a causal LM, on the store's device."""

    tokenizer: Any
    model: Any

    def __iter__(self):  # `tokenizer, model = store.planner()`
        return iter((self.tokenizer, self.model))


@dataclass(frozen=True)
class MusicModel:
    """Riffusion: a text-to-image pipeline whose images are mel spectrograms, and how many
    Griffin-Lim iterations turn one into a waveform (`retouch.pipelines.spectrogram`)."""

    pipe: Any
    griffin_lim_iters: int


@dataclass(frozen=True)
class Segmentation:
    """A label map (H×W int, same size as the input image) and the label names by id."""

    labels: np.ndarray
    names: tuple[str, ...]

    def mask(self, *names: str) -> np.ndarray:
        """Boolean H×W mask of the pixels whose label is one of `names`."""
        unknown = set(names) - set(self.names)
        if unknown:
            raise KeyError(f"unknown segmentation labels {sorted(unknown)}")
        ids = [self.names.index(n) for n in names]
        return np.isin(self.labels, ids)


class DepthEstimator:
    """`estimator(image)` → float32 H×W relative inverse depth (larger = nearer), image-sized."""

    def __init__(self, model: Any, processor: Any, device: torch.device):
        self.model, self.processor, self.device = model, processor, device

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> np.ndarray:
        rgb = image.convert("RGB")
        inputs = self.processor(images=rgb, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        depth = self.model(pixel_values=pixel_values).predicted_depth  # (1, h, w)
        depth = torch.nn.functional.interpolate(
            depth[:, None].float(), size=(rgb.height, rgb.width), mode="bicubic",
            align_corners=False)
        return depth[0, 0].cpu().numpy().astype(np.float32)


class Segmenter:
    """`segmenter(image)` → `Segmentation` with a label for every pixel of the input image.

    Works for any transformers semantic-segmentation model whose output has `logits`
    (SegFormer, UperNet); label names are the model's `id2label`, stripped of spaces."""

    def __init__(self, model: Any, processor: Any, device: torch.device):
        self.model, self.processor, self.device = model, processor, device
        id2label = model.config.id2label
        self.names = tuple(id2label[i].strip() for i in range(len(id2label)))

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> Segmentation:
        rgb = image.convert("RGB")
        inputs = self.processor(images=rgb, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        logits = self.model(pixel_values=pixel_values).logits  # (1, labels, h/4, w/4)
        logits = torch.nn.functional.interpolate(
            logits.float(), size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)
        labels = logits.argmax(dim=1)[0].cpu().numpy().astype(np.int32)
        return Segmentation(labels=labels, names=self.names)


class Matter:
    """`matter(image)` → float32 H×W alpha in [0, 1] (1 = the salient object), image-sized."""

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def __call__(self, image: Image.Image) -> np.ndarray:
        from retouch.models.u2net_arch import salient_alpha

        return salient_alpha(self.network, image)


class ModelStore:
    """Every model of `profile` on `device`, loaded on first use.

    `dtype` (a name such as "bfloat16" or a `torch.dtype`) is the dtype of the diffusion and
    transformers models; models whose spec pins one (the depth estimator, the segmenter, the
    upscalers: float32) keep theirs. Unset, it is float32 on CPU and the profile's dtype
    elsewhere. `seed` replaces a random-weight profile's seed. `accel` holds the CUDA speed
    settings applied to every diffusion pipeline on CUDA (`models.accel`; from the environment
    when unset); on CPU pipelines keep diffusers' defaults.
    """

    def __init__(self, profile: str = "tiny", device: str | torch.device = "cpu",
                 cache_dir: Path | str | None = None, overrides: dict[str, str] | None = None,
                 dtype: str | torch.dtype | None = None, local_files_only: bool = True,
                 seed: int | None = None, accel: AccelSettings | None = None):
        self.profile: Profile = resolve_profile(profile, overrides)
        self.accel = accel or AccelSettings.from_env()
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.local_files_only = local_files_only
        self._dtype_name = _dtype_name(dtype) if dtype is not None else None
        self.seed = seed if seed is not None else self.profile.seed
        self._loaded: dict[tuple, Any] = {}
        self._revisions: dict[str, str] = {}
        self._lock = threading.RLock()
        _quiet_loading_progress_bars()

    # --- profile facts --------------------------------------------------------------------

    @property
    def quality_steps(self) -> dict[str, int]:
        return dict(self.profile.quality_steps)

    @property
    def native_size(self) -> int:
        return self.profile.native_size

    def spec(self, name: str) -> ModelSpec:
        return self.profile.spec(name)

    def dtype_for(self, spec: ModelSpec) -> torch.dtype:
        """The spec's dtype, else the store's; on CPU float32 unless the store was given a dtype
        (half precision is slow there)."""
        if spec.dtype:
            return getattr(torch, spec.dtype)
        if self._dtype_name:
            return getattr(torch, self._dtype_name)
        if self.device.type == "cpu":
            return torch.float32
        return getattr(torch, self.profile.dtype)

    # --- revisions -------------------------------------------------------------------------

    def revision(self, name: str) -> str:
        """What spec `name` is (or would be) loaded from: a hub snapshot's commit hash, a
        `sha256:` content hash of a local file or directory, or `random:<seed>`."""
        with self._lock:
            if name not in self._revisions:
                self._revisions[name] = self._resolve_revision(self.spec(name))
            return self._revisions[name]

    def revisions(self) -> dict[str, str]:
        """{spec name: revision} of every model this store has loaded so far."""
        with self._lock:
            return dict(self._revisions)

    def _resolve_revision(self, spec: ModelSpec) -> str:
        if spec.is_random:
            return random_revision(self.seed)
        source = self.source_of(spec)
        if Path(source).exists():
            return content_revision(Path(source, spec.subfolder or "", spec.weight_name or ""))
        from retouch.models.fetch import is_url, url_cache_path

        if is_url(source):
            return content_revision(url_cache_path(self.cache_dir, source))
        return hub_revision(source, spec.revision)

    def _loaded_from(self, *names: str) -> None:
        for name in names:
            self.revision(name)

    def source_of(self, spec: ModelSpec) -> str:
        """Where `spec` loads from: a tiny-cache path (built on first use), a local path, a hub id."""
        if spec.is_tiny:
            from retouch.models.tiny import build_tiny_models

            root = build_tiny_models(self.cache_dir)
            return str(root / spec.source[len(TINY_PREFIX):])
        if spec.is_random:
            from retouch.models.random_weights import config_dir

            return str(config_dir(spec))
        local = Path(spec.source).expanduser()
        return str(local) if local.exists() else spec.source

    def _hub_kwargs(self, spec: ModelSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if spec.revision:
            kwargs["revision"] = spec.revision
        if spec.subfolder:
            kwargs["subfolder"] = spec.subfolder
        return kwargs

    def _cached(self, key: tuple, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
            return self._loaded[key]

    # --- diffusion ------------------------------------------------------------------------

    def _seed_of(self, spec: ModelSpec, part: str = "") -> int:
        from retouch.models.random_weights import component_seed

        return component_seed(self.seed or 0, f"{spec.name}/{part}" if part else spec.name)

    def _diffusion_pipeline(self, cls: Any, spec_name: str, **loader_options: Any) -> Any:
        """`cls` for `spec_name`; `loader_options` go to `from_pretrained` (a random twin's
        `model_index.json` already says the same)."""
        spec = self.spec(spec_name)
        if spec.is_random:
            from retouch.models.random_weights import diffusion_pipeline

            pipe = diffusion_pipeline(cls, Path(self.source_of(spec)), self.device,
                                      self.dtype_for(spec), self._seed_of(spec))
        else:
            pipe = cls.from_pretrained(self.source_of(spec), dtype=self.dtype_for(spec),
                                       **self._hub_kwargs(spec), **_variant(spec),
                                       **loader_options)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._loaded_from(spec_name)
        return apply_cuda_defaults(pipe, self.accel)

    def _diffusers_model(self, cls: Any, spec: ModelSpec, subfolder: str | None = None) -> Any:
        """One diffusers model of `spec` (its `subfolder` component), eval mode, on the device."""
        if spec.is_random:
            from retouch.models.random_weights import diffusers_model

            folder = Path(self.source_of(spec), subfolder or "")
            return diffusers_model(cls, folder, self.device, self.dtype_for(spec),
                                   self._seed_of(spec, subfolder or ""))
        kwargs = self._hub_kwargs(spec)
        if subfolder:
            kwargs["subfolder"] = subfolder
        model = cls.from_pretrained(self.source_of(spec), dtype=self.dtype_for(spec), **kwargs,
                                    **_variant(spec))
        return model.to(self.device).eval()

    def _scheduler_of(self, spec: ModelSpec, parent: Any) -> Any:
        """The scheduler `spec`'s repository ships, else (random twins) a copy of `parent`'s."""
        if spec.is_random:
            return parent.scheduler.__class__.from_config(parent.scheduler.config)
        from diffusers import DiffusionPipeline

        index = DiffusionPipeline.load_config(self.source_of(spec), **self._hub_kwargs(spec))
        library, class_name = index["scheduler"]
        scheduler_cls = getattr(importlib.import_module(library), class_name)
        return scheduler_cls.from_pretrained(self.source_of(spec), subfolder="scheduler",
                                             **self._hub_kwargs(spec))

    def _derived(self, cls: Any, parent: Any, scheduler: Any = None, **components: Any) -> Any:
        """`cls.from_pipe(parent)` sharing weights, with a scheduler of its own."""
        if scheduler is None:
            scheduler = parent.scheduler.__class__.from_config(parent.scheduler.config)
        # from_pipe casts every shared module to `dtype` (float32 unless told): keep the parent's.
        with _quiet_logger("diffusers.models.modeling_utils"):
            pipe = cls.from_pipe(parent, scheduler=scheduler, dtype=parent.dtype, **components)
        pipe.set_progress_bar_config(disable=True)
        return apply_cuda_defaults(pipe, self.accel)  # the shared modules are set up once

    def text2img(self) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return self._cached(("text2img",), lambda: self._diffusion_pipeline(
            StableDiffusionXLPipeline, "base"))

    def img2img(self) -> Any:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        return self._cached(("img2img",), lambda: self._derived(
            StableDiffusionXLImg2ImgPipeline, self.text2img()))

    def inpaint(self) -> Any:
        """SDXL inpainting: its own 9-channel UNet and scheduler, the base model's text encoders,
        tokenizers and VAE (shared through `from_pipe`)."""
        from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

        def load() -> Any:
            spec, base = self.spec("inpaint"), self.text2img()
            unet = self._diffusers_model(UNet2DConditionModel, spec, "unet")
            pipe = self._derived(StableDiffusionXLInpaintPipeline, base,
                                 scheduler=self._scheduler_of(spec, base), unet=unet)
            self._loaded_from("inpaint")
            return pipe

        return self._cached(("inpaint",), load)

    def controlnet(self, kind: str) -> Any:
        from diffusers import ControlNetModel

        spec = self.spec(_controlnet_spec_name(kind))

        def load() -> Any:
            model = self._diffusers_model(ControlNetModel, spec)
            self._loaded_from(spec.name)
            return model

        return self._cached(("controlnet", kind), load)

    def controlnet_img2img(self, kind: str) -> Any:
        """SDXL ControlNet img2img sharing the base model's weights; `kind` "depth" | "canny"."""
        from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

        return self._cached(("controlnet_img2img", kind), lambda: self._derived(
            StableDiffusionXLControlNetImg2ImgPipeline, self.text2img(),
            controlnet=self.controlnet(kind)))

    def controlnet_inpaint(self, kind: str) -> Any:
        """SDXL ControlNet inpaint sharing the inpaint model's weights; `kind` "depth" | "canny"."""
        from diffusers import StableDiffusionXLControlNetInpaintPipeline

        return self._cached(("controlnet_inpaint", kind), lambda: self._derived(
            StableDiffusionXLControlNetInpaintPipeline, self.inpaint(),
            controlnet=self.controlnet(kind)))

    def diffusion_pipelines(self) -> list[Any]:
        """Every diffusion pipeline of the profile, loaded (the full resident set of a replica)."""
        pipes = [self.text2img(), self.img2img(), self.inpaint()]
        for kind in CONTROLNET_KINDS:
            pipes += [self.controlnet_img2img(kind), self.controlnet_inpaint(kind)]
        return pipes

    # --- IP-Adapter (reference images) ----------------------------------------------------

    def ip_adapter_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The IP-Adapter state dict as diffusers expects it: {"image_proj": ..., "ip_adapter": ...}."""
        spec = self.spec("ip_adapter")

        def load() -> dict[str, dict[str, torch.Tensor]]:
            if spec.is_random:
                from transformers import CLIPVisionConfig

                from retouch.models.random_weights import ip_adapter_state_dict

                encoder = CLIPVisionConfig.from_pretrained(self.source_of(spec))
                weights = ip_adapter_state_dict(self.text2img().unet, encoder.projection_dim,
                                                self.device, self.dtype_for(spec),
                                                self._seed_of(spec))
            else:
                from safetensors.torch import load_file

                from retouch.models.ip_adapter_layout import group_ip_adapter_tensors

                weights = group_ip_adapter_tensors(load_file(str(self._file_of(spec))))
            self._loaded_from("ip_adapter")
            return weights

        return self._cached(("ip_adapter_weights",), load)

    def image_encoder(self) -> tuple[Any, Any]:
        """(CLIPVisionModelWithProjection, its image processor) for IP-Adapter conditioning."""
        from transformers import CLIPVisionModelWithProjection

        spec = self.spec("image_encoder")

        def load() -> tuple[Any, Any]:
            model = self._transformers_model(CLIPVisionModelWithProjection, spec)
            size = model.config.image_size  # diffusers' default processor for IP-Adapter
            self._loaded_from("image_encoder")
            return model, _clip_image_processor(size)

        return self._cached(("image_encoder",), load)

    def _ip_adapter_layers(self, pipe: Any) -> tuple[dict[str, Any], Any]:
        """(cross-attention processors by name, image projection) of the IP-Adapter, built once
        per store from `ip_adapter_weights()` by diffusers' loader and then kept off the UNet.
        The base and inpaint UNets have one attention layout, so both attach the same layers."""

        def load() -> tuple[dict[str, Any], Any]:
            unet = pipe.unet
            before = dict(unet.attn_processors)
            with _quiet_logger("diffusers.models.modeling_utils"):
                pipe.load_ip_adapter(self.ip_adapter_weights(), subfolder="", weight_name="",
                                     image_encoder_folder=None)
            layers = {name: processor for name, processor in unet.attn_processors.items()
                      if _is_ip_adapter_processor(processor)}
            projection = unet.encoder_hid_proj
            _detach_ip_adapter(unet, before)
            return layers, projection

        return self._cached(("ip_adapter_layers",), load)

    @contextlib.contextmanager
    def reference_conditioning(self, pipe: Any, scale: float = 0.6) -> Iterator[Any]:
        """The IP-Adapter attached to `pipe` for the block at `scale`: call it with
        `ip_adapter_image=...`.

        The adapter's layers are built once per store; entering attaches them to `pipe`'s UNet
        (its cross-attention processors and image projection) and registers the image encoder,
        leaving restores the UNet's own processors. The UNet is shared with sibling pipelines, so
        the store's lock is held meanwhile (no other load or attachment interleaves).
        """
        with self._lock:
            encoder, processor = self.image_encoder()
            pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
            unet = pipe.unet
            own = dict(unet.attn_processors)
            try:
                layers, projection = self._ip_adapter_layers(pipe)
                unet.set_attn_processor({name: layers.get(name, processor)
                                         for name, processor in own.items()})
                unet.encoder_hid_proj = projection
                unet.config.encoder_hid_dim_type = "ip_image_proj"
                pipe.set_ip_adapter_scale(scale)
                yield pipe
            finally:
                _detach_ip_adapter(unet, own)
                pipe.register_modules(image_encoder=None, feature_extractor=None)

    # --- transformers models --------------------------------------------------------------

    def _transformers_model(self, cls: Any, spec: ModelSpec) -> Any:
        """`cls` (a model class or an `AutoModel...` class) for `spec`, eval mode, on the device."""
        if spec.is_random:
            from retouch.models.random_weights import transformers_model

            return transformers_model(cls, Path(self.source_of(spec)), self.device,
                                      self.dtype_for(spec), self._seed_of(spec))
        model = cls.from_pretrained(self.source_of(spec), dtype=self.dtype_for(spec),
                                    **self._hub_kwargs(spec))
        return model.to(self.device).eval()

    def _image_processor(self, spec: ModelSpec) -> Any:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(
            self.source_of(spec), backend=_image_backend(), **self._hub_kwargs(spec))

    def depth_estimator(self) -> DepthEstimator:
        from transformers import AutoModelForDepthEstimation

        spec = self.spec("depth")

        def load() -> DepthEstimator:
            model = self._transformers_model(AutoModelForDepthEstimation, spec)
            self._loaded_from("depth")
            return DepthEstimator(model, self._image_processor(spec), self.device)

        return self._cached(("depth",), load)

    def segmenter(self) -> Segmenter:
        from transformers import AutoModelForSemanticSegmentation

        spec = self.spec("segmenter")

        def load() -> Segmenter:
            model = self._transformers_model(AutoModelForSemanticSegmentation, spec)
            self._loaded_from("segmenter")
            return Segmenter(model, self._image_processor(spec), self.device)

        return self._cached(("segmenter",), load)

    def scene_segmenter(self) -> Segmenter:
        """ADE20K scene segmentation (150 classes: wall, floor, ceiling, sky, grass, furniture...)."""
        from transformers import AutoModelForSemanticSegmentation

        spec = self.spec("scene_segmenter")

        def load() -> Segmenter:
            model = self._transformers_model(AutoModelForSemanticSegmentation, spec)
            self._loaded_from("scene_segmenter")
            return Segmenter(model, self._image_processor(spec), self.device)

        return self._cached(("scene_segmenter",), load)

    def matter(self) -> Matter:
        """The salient-object matting network (U²-Net): a soft alpha of the main subject."""
        spec = self.spec("matting")

        def load() -> Matter:
            from retouch.models.u2net_arch import build_u2net, read_state_dict

            config = dict(spec.options)
            if spec.is_random:
                from retouch.models.random_weights import seeded_init

                with seeded_init(self.device, self.dtype_for(spec), self._seed_of(spec)):
                    network = build_u2net(**config)
            else:
                with torch.device("meta"):  # every tensor comes from the file
                    network = build_u2net(**config)
                network = network.to_empty(device=self.device).to(self.dtype_for(spec))
                network.load_state_dict(read_state_dict(self._weight_file(spec)), strict=True)
            self._loaded_from("matting")
            return Matter(network.eval())

        return self._cached(("matting",), load)

    def planner(self) -> Planner:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = self.spec("planner")

        def load() -> Planner:
            if spec.is_random:
                from retouch.models.random_weights import qwen_tokenizer

                tokenizer = qwen_tokenizer(Path(self.source_of(spec)))
            else:
                tokenizer = AutoTokenizer.from_pretrained(self.source_of(spec),
                                                          **self._hub_kwargs(spec))
            model = self._transformers_model(AutoModelForCausalLM, spec)
            self._loaded_from("planner")
            return Planner(tokenizer=tokenizer, model=model)

        return self._cached(("planner",), load)

    def speech(self) -> "SpeechSynthesizer":
        """Text to speech for voice-overs: SpeechT5, its HiFi-GAN vocoder and the speaker's
        x-vector (`retouch.models.speech`)."""
        from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5Tokenizer

        from retouch.models.speech import (SpeechSynthesizer, char_tokenizer,
                                           read_speaker_embedding)

        spec, speaker = self.spec("speech"), self.spec("speaker")

        def load() -> SpeechSynthesizer:
            model = self._transformers_model(SpeechT5ForTextToSpeech, spec)
            vocoder = self._transformers_model(SpeechT5HifiGan, self.spec("vocoder"))
            if spec.is_random:
                import tempfile

                from retouch.models.speech import TWIN_CHARACTERS

                with tempfile.TemporaryDirectory() as folder:  # ids within the model's vocab
                    tokenizer = char_tokenizer(
                        Path(folder), TWIN_CHARACTERS[:model.config.vocab_size - 4])
                generator = torch.Generator().manual_seed(self._seed_of(speaker))
                embedding = torch.randn(model.config.speaker_embedding_dim, generator=generator)
            else:
                tokenizer = SpeechT5Tokenizer.from_pretrained(self.source_of(spec),
                                                              **self._hub_kwargs(spec))
                embedding = torch.from_numpy(read_speaker_embedding(
                    self._weight_file(speaker), speaker.options.get("speaker")))
            self._loaded_from("speech", "vocoder", "speaker")
            return SpeechSynthesizer(tokenizer, model, vocoder,
                                     embedding.to(self.device, model.dtype)[None], self.device)

        return self._cached(("speech",), load)

    def music(self) -> MusicModel:
        """Text to music for a video's background: Riffusion, a Stable Diffusion 1.5 pipeline
        drawing mel spectrograms (no safety checker: it classifies photos, not spectrograms)."""
        from diffusers import StableDiffusionPipeline

        spec = self.spec("music")

        def load() -> MusicModel:
            pipe = self._diffusion_pipeline(StableDiffusionPipeline, "music",
                                            safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
            return MusicModel(pipe, int(spec.options.get("griffin_lim_iters",
                                                         MUSIC_GRIFFIN_LIM_ITERS)))

        return self._cached(("music",), load)

    # --- Real-ESRGAN ----------------------------------------------------------------------

    def upscaler_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict of the Real-ESRGAN network `name` (float32; on the CPU, or on the
        device for a random twin)."""
        from retouch.models.realesrgan_arch import read_state_dict

        spec = self._upscaler_spec(name)

        def load() -> dict[str, torch.Tensor]:
            if spec.is_random:
                from retouch.models.random_weights import realesrgan_state_dict

                weights = realesrgan_state_dict(spec.options, self.device, self.dtype_for(spec),
                                                self._seed_of(spec))
            else:
                weights = read_state_dict(self._weight_file(spec))
            self._loaded_from(name)
            return weights

        return self._cached(("upscaler_weights", name), load)

    def upscaler(self, name: str) -> torch.nn.Module:
        """The Real-ESRGAN network `name` (a registry upscaler name), eval mode, on the device."""
        return self._cached(("upscaler", name),
                            lambda: self.build_upscaler(name, self.upscaler_weights(name)))

    def build_upscaler(self, name: str, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A fresh network with `name`'s architecture loaded (strict) with `state_dict`."""
        from retouch.models.realesrgan_arch import build_network

        spec = self._upscaler_spec(name)
        config = dict(spec.options)
        with torch.device("meta"):  # no initialisation: every tensor comes from `state_dict`
            network = build_network(config.pop("arch"), **config)
        network = network.to_empty(device=self.device).to(self.dtype_for(spec))
        network.load_state_dict(state_dict, strict=True)
        return network.eval()

    def _upscaler_spec(self, name: str) -> ModelSpec:
        spec = self.spec(name)
        if spec.family != "upscaler":
            raise KeyError(f"{name!r} is not an upscaler")
        return spec

    def _file_of(self, spec: ModelSpec) -> Path:
        """`spec.weight_name` inside `spec.subfolder` of a local directory or a hub repository."""
        source = self.source_of(spec)
        if Path(source).is_dir():
            return Path(source, spec.subfolder or "", spec.weight_name or "")
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, spec.weight_name, **self._hub_kwargs(spec)))

    def _weight_file(self, spec: ModelSpec) -> Path:
        """A local `.pth` for `spec`: a tiny-cache or local file, a URL (downloaded into the
        cache unless `local_files_only`), or a hub id with `weight_name`."""
        from retouch.models.fetch import is_url, url_cache_path

        source = self.source_of(spec)
        if Path(source).is_file():
            return Path(source)
        if is_url(source):
            target = url_cache_path(self.cache_dir, source)
            if not target.is_file():
                if self.local_files_only:
                    raise FileNotFoundError(
                        f"{spec.name}: {target} is missing; run `retouch fetch-models` "
                        f"(or download {source} there)")
                from retouch.models.fetch import fetch_models

                fetch_models(dataclasses.replace(self.profile, specs={spec.name: spec}),
                             self.cache_dir)
            return target
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, spec.weight_name or "model.pth",
                                    **self._hub_kwargs(spec)))


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return name


def _is_ip_adapter_processor(processor: Any) -> bool:
    from diffusers.models.attention_processor import (IPAdapterAttnProcessor,
                                                      IPAdapterAttnProcessor2_0)

    return isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))


def _detach_ip_adapter(unet: Any, processors: dict[str, Any]) -> None:
    """`unet` back to `processors` and no image projection (as diffusers' `unload_ip_adapter`
    leaves it, but keeping the UNet's own processor objects)."""
    unet.set_attn_processor(dict(processors))
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None


def _variant(spec: ModelSpec) -> dict[str, str]:
    variant = spec.options.get("variant")
    return {"variant": variant} if variant else {}


def _controlnet_spec_name(kind: str) -> str:
    if kind not in CONTROLNET_KINDS:
        raise ValueError(f"unknown ControlNet kind {kind!r}; known: {list(CONTROLNET_KINDS)}")
    return f"controlnet_{kind}"


def _clip_image_processor(size: int) -> Any:
    if _image_backend() == "torchvision":
        from transformers import CLIPImageProcessor as processor_class
    else:
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil as processor_class)
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _image_backend() -> str:
    """torchvision image processors where torchvision exists (GPU image), else PIL."""
    import importlib.util

    return "torchvision" if importlib.util.find_spec("torchvision") else "pil"


def _quiet_loading_progress_bars() -> None:
    """Weight-loading bars of diffusers/transformers are noise in a worker; pipelines report
    their own progress. (These switches are process-wide library settings.)"""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence `name` below ERROR for a block (from_pipe's no-op cast warns on every call)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
